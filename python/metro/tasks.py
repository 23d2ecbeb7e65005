"""metro's generic Celery task, ``metro.run_handler``: it runs ``python =`` handlers.

metro sends one task per message and handler, with the handler's dotted path as the one
positional argument and the original's four keyword arguments. The task imports the function and
calls it, so a handler written for the original runs unchanged::

    def my_func(*, message, topic_name, subscription_name, sequence_number): ...

Register it with the workers' app: ``app.autodiscover_tasks(["metro"])`` imports this module
(Celery's autodiscovery imports ``<package>.tasks``), or list ``"metro.tasks"`` in the app's
``imports`` / ``include``. It is a ``shared_task``, so it joins whichever app the worker runs.
"""

import asyncio
import importlib
import inspect

from celery import shared_task

RUN_HANDLER = "metro.run_handler"


def resolve(path):
    """The object at a dotted path: the longest importable module prefix, then attributes.

    Raises ImportError naming the path when it does not lead to anything.
    """
    if not isinstance(path, str) or not path or "." not in path:
        raise ImportError(f"{path!r} is not a dotted path such as 'myapp.handlers.my_func'")
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            target = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            # This prefix is not a module: try a shorter one. A module that exists but fails to
            # import one of its own dependencies is the handler's bug: say so.
            missing = error.name or ""
            if module_name == missing or module_name.startswith(missing + "."):
                continue
            raise
        for attribute in parts[split:]:
            try:
                target = getattr(target, attribute)
            except AttributeError:
                raise ImportError(
                    f"module {module_name!r} has no attribute {'.'.join(parts[split:])!r}"
                ) from None
        return target
    raise ImportError(f"no module named {parts[0]!r}")


@shared_task(name=RUN_HANDLER, bind=True)
def run_handler(self, function, *, message, topic_name, subscription_name, sequence_number):
    """Imports ``function`` (a dotted path) and calls it with the four keyword arguments."""
    try:
        handler = resolve(function)
    except ImportError as error:
        raise ImportError(f"metro.run_handler cannot import the handler {function!r}: {error}") from error
    if not callable(handler):
        raise TypeError(f"metro.run_handler: {function!r} is not callable")
    result = handler(
        message=message,
        topic_name=topic_name,
        subscription_name=subscription_name,
        sequence_number=sequence_number,
    )
    if inspect.isawaitable(result):
        async def wait():
            return await result

        asyncio.run(wait())
    return None
