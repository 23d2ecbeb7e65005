"""A handler that is a Celery task too: metro sends it by its registered name."""

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task
def log_joke(*, message, topic_name, subscription_name, sequence_number):
    logger.info("%s/%s#%s: %s", topic_name, subscription_name, sequence_number, message)
    return {"logged": sequence_number}
