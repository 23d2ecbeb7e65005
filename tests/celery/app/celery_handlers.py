"""Plain handler functions written exactly as the original's users wrote them: no Celery
decorator, the four keyword arguments. metro runs them through metro.run_handler."""

from metro_test_app import attempts, record


def my_func(*, message: dict, topic_name: str, subscription_name: str, sequence_number: int) -> None:
    record("my_func", message=message, topic_name=topic_name,
           subscription_name=subscription_name, sequence_number=sequence_number)


def always_fails(*, message, topic_name, subscription_name, sequence_number):
    raise ValueError(f"boom {sequence_number}")


def fails_twice(*, message, topic_name, subscription_name, sequence_number):
    if attempts(f"fails-twice-{topic_name}-{sequence_number}") < 2:
        raise RuntimeError(f"not yet ({sequence_number})")
    record("fails_twice", sequence_number=sequence_number)


async def async_handler(*, message, topic_name, subscription_name, sequence_number):
    record("async_handler", sequence_number=sequence_number)


def noop(*, message, topic_name, subscription_name, sequence_number):
    return None
