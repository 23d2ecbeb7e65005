"""The settings of a Django project that used the original "Metro for Django" (the parts metro
reads): the METRO dict with handler functions, and the Celery settings of its workers."""

import os

from demoproj.demoapp.services import my_func, print_joke
from demoproj.demoapp.tasks import log_joke

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)

METRO = {
    "subscriptions": [
        {
            "topic_name": "metro-demo",
            "subscription_name": "sub-metrodemo-metrodemoerfett",
            "connection_string": os.environ.get("CONNECTION_STRING_METRO_DEMO"),
            "handlers": [
                {"subject": "MetroDemo/Type/GeekJokes", "handler_function": my_func},
                {"subject": "MetroDemo/Type/DadJokes", "handler_function": print_joke},
            ],
        },
        {
            "topic_name": "metro-demo",
            "subscription_name": "sub-metrodemo-alljokes",
            "connection_string": os.environ.get("CONNECTION_STRING_METRO_DEMO"),
            "handlers": [
                {"subject": r"^MetroDemo/Type/.*$", "regex": True, "handler_function": log_joke},
            ],
        },
    ]
}
