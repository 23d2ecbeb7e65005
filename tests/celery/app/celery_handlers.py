"""Plain handler functions written exactly as the original's users wrote them: no Celery
decorator, the four keyword arguments. metro runs them through metro.run_handler."""

import os
import time

from metro import complete_deferred_message, complete_deferred_message_async
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


def fails_until_fixed(*, message, topic_name, subscription_name, sequence_number):
    """Raises until the test "fixes" it by creating the file fixed-<topic>-<seq> in the state
    directory."""
    directory = os.environ.get("METRO_TEST_STATE", "/tmp")
    if not os.path.exists(os.path.join(directory, f"fixed-{topic_name}-{sequence_number}")):
        raise ValueError(f"not fixed yet ({sequence_number})")
    record("fails_until_fixed", topic_name=topic_name, sequence_number=sequence_number)


def completes(*, message, topic_name, subscription_name, sequence_number):
    """Completes its message itself, the original's way, from sync code."""
    complete_deferred_message(
        sequence_number=sequence_number, topic_name=topic_name, subscription_name=subscription_name
    )
    record("completes", topic_name=topic_name, sequence_number=sequence_number)


async def completes_async(*, message, topic_name, subscription_name, sequence_number):
    """Completes its message itself from async code: the original's `await
    complete_deferred_message(...)`, and the explicit coroutine."""
    if message.get("explicit_coroutine"):
        await complete_deferred_message_async(
            sequence_number=sequence_number, topic_name=topic_name,
            subscription_name=subscription_name)
    else:
        await complete_deferred_message(
            sequence_number=sequence_number, topic_name=topic_name,
            subscription_name=subscription_name)
    record("completes_async", topic_name=topic_name, sequence_number=sequence_number)


def sleepy(*, message, topic_name, subscription_name, sequence_number):
    """Sleeps `seconds` of its message, then records that it ran."""
    record("sleepy.start", topic_name=topic_name, sequence_number=sequence_number)
    time.sleep(float(message.get("seconds", 1)))
    record("sleepy", topic_name=topic_name, sequence_number=sequence_number)


def slow_first_time(*, message, topic_name, subscription_name, sequence_number):
    """Its first run takes `seconds` (a worker killed meanwhile loses it); later runs are quick."""
    first = attempts(f"slow-first-{topic_name}-{sequence_number}") == 0
    record("slow_first_time.start", topic_name=topic_name, sequence_number=sequence_number)
    if first:
        time.sleep(float(message.get("seconds", 30)))
    record("slow_first_time", topic_name=topic_name, sequence_number=sequence_number)
