"""metro's Python side, importable under the original "Metro for Django" module path.

``from metro import complete_deferred_message`` and
``from metro.complete import complete_deferred_message`` both work, so a migrated project changes
no line. ``metro.tasks`` holds the generic Celery task that runs ``python =`` handlers; it is
imported by the workers (``app.autodiscover_tasks(["metro"])``), never by this module, so that
completing a message needs neither Celery nor Django.
"""

from .complete import (
    MetroAuthError,
    MetroConfigError,
    MetroConflictError,
    MetroError,
    MetroForbiddenError,
    MetroNotFoundError,
    MetroUnavailableError,
    complete_deferred_message,
    complete_deferred_message_async,
)

__all__ = [
    "MetroAuthError",
    "MetroConfigError",
    "MetroConflictError",
    "MetroError",
    "MetroForbiddenError",
    "MetroNotFoundError",
    "MetroUnavailableError",
    "complete_deferred_message",
    "complete_deferred_message_async",
]
