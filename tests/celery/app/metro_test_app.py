"""The Celery app the Celery tests run as a real worker: Redis broker and result backend from the
environment, metro's generic task registered the way a team's app does it
(autodiscover_tasks(["metro"])), and registered test tasks."""

import json
import os
import time

from celery import Celery

app = Celery("metro_test_app")
app.conf.update(
    broker_url=os.environ.get("METRO_TEST_BROKER", "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get("METRO_TEST_BACKEND", "redis://127.0.0.1:6379/1"),
    task_track_started=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry=True,
    broker_connection_max_retries=None,
)
app.autodiscover_tasks(["metro"])


def record(kind, **values):
    """Appends one JSON line to the file the test reads."""
    path = os.environ.get("METRO_TEST_OUT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"kind": kind, **values}) + "\n")


def attempts(key):
    """How many times `key` was seen before (a counter file per key)."""
    directory = os.environ.get("METRO_TEST_STATE", "/tmp")
    path = os.path.join(directory, f"attempts-{key}")
    seen = 0
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            seen = int(f.read() or 0)
    with open(path, "w", encoding="utf-8") as f:
        f.write(str(seen + 1))
    return seen


@app.task(name="tests.handle")
def handle(*, message, topic_name, subscription_name, sequence_number):
    record("tests.handle", message=message, topic_name=topic_name,
           subscription_name=subscription_name, sequence_number=sequence_number)
    return {"ok": True, "sequence_number": sequence_number}


@app.task(name="tests.retrying", bind=True, max_retries=5)
def retrying(self, *, message, topic_name, subscription_name, sequence_number):
    # metro's headers are on the request of the first run; Celery 5.2 does not carry custom
    # headers over to the message self.retry sends.
    record("tests.retrying.run", sequence_number=sequence_number, retries=self.request.retries,
           correlation_id=getattr(self.request, "metro_correlation_id", None),
           attempt=getattr(self.request, "metro_attempt", None))
    if attempts(f"retrying-{topic_name}-{sequence_number}") < 2:
        countdown = message.get("countdown", 0.2) if isinstance(message, dict) else 0.2
        raise self.retry(countdown=countdown)
    record("tests.retrying", sequence_number=sequence_number, retries=self.request.retries)
    return "done"


@app.task(name="tests.slow")
def slow(*, message, topic_name, subscription_name, sequence_number):
    time.sleep(float(message.get("seconds", 5)) if isinstance(message, dict) else 5)
    return None


@app.task(name="tests.noop")
def noop(*, message, topic_name, subscription_name, sequence_number):
    return None
