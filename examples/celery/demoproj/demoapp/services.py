"""Handlers written exactly as for the original: plain functions with its four keyword
arguments. metro runs them on the team's Celery workers through metro.run_handler."""

import logging

from metro.complete import complete_deferred_message

logger = logging.getLogger(__name__)


def my_func(*, message: dict, topic_name: str, subscription_name: str, sequence_number: int) -> None:
    logger.info("joke %s: %s", sequence_number, message.get("joke"))
    # The original asked handlers to complete their message; with metro this is optional
    # (completion = "auto" completes it when the task succeeds) and harmless twice.
    complete_deferred_message(
        sequence_number=sequence_number, topic_name=topic_name, subscription_name=subscription_name
    )


def print_joke(*, message: dict, topic_name: str, subscription_name: str, sequence_number: int) -> None:
    print(f"{topic_name}/{subscription_name}#{sequence_number}: {message.get('joke')}")
