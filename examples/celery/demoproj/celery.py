"""The project's Celery app, as a Django project sets it up; `autodiscover_tasks(["metro"])`
registers metro's generic task (metro.run_handler) that runs the plain-function handlers."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demoproj.settings")

app = Celery("demoproj")
app.config_from_object("demoproj.settings", namespace="CELERY")
app.autodiscover_tasks(["metro", "demoproj.demoapp"])
