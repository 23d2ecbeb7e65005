"""Dumps the original's METRO settings as JSON for ``metro import-django``::

    python manage.py shell -c "from metro.django_settings import dump; dump()" > settings.json
    metro import-django settings.json > metro.toml

Handler functions become their dotted paths (a Celery task also gives its registered name);
connection strings and Celery URLs that equal an environment variable's value become
``{"env": "NAME"}``, so that the config reads them from the environment rather than holding the
secret. Run it in the environment the project runs in.
"""

import json
import os
import sys

_FROM_ENVIRONMENT = {"connection_string", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"}
_CELERY_SETTINGS = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_TASK_DEFAULT_QUEUE")


def _variable_holding(value):
    if len(value) < 8:
        return None
    names = sorted(name for name, held in os.environ.items() if held == value)
    return names[0] if names else None


def _dotted_path(function):
    qualname = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{function.__module__}.{qualname}"


def _convert(value, key=None):
    if isinstance(value, str):
        if key in _FROM_ENVIRONMENT:
            name = _variable_holding(value)
            if name:
                return {"env": name}
        return value
    if isinstance(value, dict):
        return {str(k): _convert(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_convert(v, key) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if callable(value):
        if hasattr(value, "apply_async") and isinstance(getattr(value, "name", None), str):
            return {"path": _dotted_path(value), "celery_task": value.name}
        return _dotted_path(value)
    return str(value)


def settings_json(settings=None):
    """The METRO (or METROID) settings and the Celery settings metro needs, as JSON values."""
    if settings is None:
        from django.conf import settings  # noqa: PLC0415 - only where Django runs
    for key in ("METRO", "METROID"):
        metro = getattr(settings, key, None)
        if metro is not None:
            break
    else:
        raise RuntimeError("Django's settings have no METRO (or METROID) dict")
    out = {key: _convert(metro)}
    for name in _CELERY_SETTINGS:
        value = getattr(settings, name, None)
        if value is not None:
            out[name] = _convert(value, name)
    return out


def dump(settings=None, file=None):
    """Writes ``settings_json(settings)`` to ``file`` (stdout by default)."""
    out = file or sys.stdout
    json.dump(settings_json(settings), out, indent=2)
    out.write("\n")
