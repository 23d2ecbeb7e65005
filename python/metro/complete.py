"""Completing a deferred message from a handler, through metro's admin API.

``complete_deferred_message(sequence_number=…, topic_name=…, subscription_name=…)`` has the
original's keyword signature. Called from ordinary (sync) code it blocks until metro has completed
the message. Called in a thread whose asyncio loop is running, it returns an awaitable (a task
already scheduled on that loop), so the original's ``await complete_deferred_message(…)`` works
unchanged; ``complete_deferred_message_async`` is the explicit coroutine.

It sends ``POST {METRO_URL}/api/v1/deferred/{topic}/{subscription}/{sequence_number}/complete``
with ``Authorization: Bearer {METRO_TOKEN}`` (an admin token of metro's ``[admin] tokens``).
``METRO_URL`` and ``METRO_TOKEN`` come from the environment, else from Django's settings when
Django is importable and configured. Completing a message twice is harmless: metro's "already
completed" answer counts as success. Connection failures, 429 and 5xx answers are retried with
backoff until ``timeout`` (30 s by default); then ``MetroUnavailableError``. Standard library
only.
"""

import asyncio
import http.client
import json
import os
import random
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_TIMEOUT = 30.0
"""Seconds one call may take, retries included."""

_ATTEMPT_TIMEOUT = 10.0
_TRANSIENT_STATUSES = (408, 425, 429, 500, 502, 503, 504)


class MetroError(Exception):
    """Base of the errors raised here. ``status`` is the HTTP status (None without one)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class MetroConfigError(MetroError):
    """METRO_URL or METRO_TOKEN is not set anywhere."""


class MetroAuthError(MetroError):
    """401: metro does not know the token."""


class MetroForbiddenError(MetroError):
    """403: the token is a viewer's, or metro has no admin tokens."""


class MetroNotFoundError(MetroError):
    """404: metro does not know this message (or this metro does not consume the subscription)."""


class MetroConflictError(MetroError):
    """409: the message was dead-lettered, or cannot be completed now for another reason."""


class MetroUnavailableError(MetroError):
    """metro could not be reached, or kept failing (429, 5xx) until the deadline."""


def _django_setting(name):
    try:
        from django.conf import settings  # noqa: PLC0415 - optional
    except ImportError:
        return None
    try:
        return getattr(settings, name, None)
    except Exception:  # settings not configured (ImproperlyConfigured) or broken
        return None


def _endpoint():
    url = os.environ.get("METRO_URL") or _django_setting("METRO_URL")
    token = os.environ.get("METRO_TOKEN") or _django_setting("METRO_TOKEN")
    if not url:
        raise MetroConfigError(
            "metro's admin API is not configured: set METRO_URL (e.g. http://127.0.0.1:8080) "
            "in the environment or in Django's settings"
        )
    if not token:
        raise MetroConfigError(
            "no token for metro's admin API: set METRO_TOKEN (an admin token of metro's "
            "[admin] tokens) in the environment or in Django's settings"
        )
    return str(url).rstrip("/"), str(token)


def _current_celery_task_id():
    celery = sys.modules.get("celery")
    if celery is None:
        return None
    try:
        task = celery.current_task
        return task.request.id if task is not None else None
    except Exception:
        return None


def _error_text(error):
    """The `error` of metro's JSON answer, else the reason; closes the answer."""
    try:
        body = error.read(4096)
        text = json.loads(body.decode("utf-8", "replace")).get("error")
        if text:
            return str(text)
    except Exception:
        pass
    finally:
        error.close()
    return error.reason if isinstance(error.reason, str) else str(error)


def _complete_blocking(sequence_number, topic_name, subscription_name, timeout):
    base, token = _endpoint()
    sequence_number = int(sequence_number)
    name = f"{topic_name}/{subscription_name}#{sequence_number}"
    url = "{}/api/v1/deferred/{}/{}/{}/complete".format(
        base,
        urllib.parse.quote(str(topic_name), safe=""),
        urllib.parse.quote(str(subscription_name), safe=""),
        sequence_number,
    )
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    task_id = _current_celery_task_id()
    if task_id:
        headers["X-Celery-Task-Id"] = str(task_id)
    deadline = time.monotonic() + (DEFAULT_TIMEOUT if timeout is None else float(timeout))
    delay = 0.2
    last = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MetroUnavailableError(
                f"completing {name}: metro at {base} did not succeed in time: {last}"
            )
        request = urllib.request.Request(url, data=b"", method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=min(remaining, _ATTEMPT_TIMEOUT)):
                return None
        except urllib.error.HTTPError as error:
            status = error.code
            text = _error_text(error)
            if status == 401:
                raise MetroAuthError(f"completing {name}: 401: {text}", status) from None
            if status == 403:
                raise MetroForbiddenError(f"completing {name}: 403: {text}", status) from None
            if status == 404:
                raise MetroNotFoundError(f"completing {name}: 404: {text}", status) from None
            if status == 409:
                if "already completed" in text:
                    return None  # Completing twice is harmless.
                if "shutting down" not in text:
                    raise MetroConflictError(f"completing {name}: 409: {text}", status) from None
            elif status not in _TRANSIENT_STATUSES:
                raise MetroError(f"completing {name}: {status}: {text}", status) from None
            last = f"{status}: {text}"
        except (urllib.error.URLError, http.client.HTTPException, socket.timeout, OSError) as error:
            reason = getattr(error, "reason", error)
            last = f"cannot reach metro: {reason}"
        time.sleep(max(0.0, min(delay * random.uniform(0.5, 1.0), deadline - time.monotonic())))
        delay = min(delay * 2, 5.0)


async def complete_deferred_message_async(
    *, sequence_number, topic_name, subscription_name, timeout=None
):
    """Completes the deferred message; the coroutine form (the HTTP call runs in a thread)."""
    return await asyncio.to_thread(
        _complete_blocking, sequence_number, topic_name, subscription_name, timeout
    )


def complete_deferred_message(*, sequence_number, topic_name, subscription_name, timeout=None):
    """Completes the deferred message ``topic_name/subscription_name#sequence_number``.

    Blocks until done from sync code; in a thread with a running asyncio loop, returns an
    awaitable that is already scheduled (so it completes even if nobody awaits it).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is None:
        return _complete_blocking(sequence_number, topic_name, subscription_name, timeout)
    return loop.create_task(
        complete_deferred_message_async(
            sequence_number=sequence_number,
            topic_name=topic_name,
            subscription_name=subscription_name,
            timeout=timeout,
        )
    )
