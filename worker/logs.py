"""structlog, configured for one JSON line per step, with redaction as the last guard.

The code never passes tokens or personal data to a logger; ``redact`` is the belt to
those braces: any key that names a secret or a personal-data field is masked, and any
value that looks like a bearer/basic credential is masked too.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SENSITIVE_KEYS = frozenset(
    {
        "authorization", "token", "api_key", "secret", "password", "headers",
        "extracted_data", "first_name", "last_name", "name", "full_name", "date_of_birth",
        "dob", "document_number", "mrz", "address", "place_of_birth", "email", "phone",
    }
)
#: Celery's per-task INFO lines, quietened by ``configure`` (see there).
CELERY_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
MASK = "[redacted]"


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return _CREDENTIAL.sub(r"\1 " + MASK, value)
    if isinstance(value, dict):
        return {k: MASK if str(k).lower() in SENSITIVE_KEYS else _clean(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask secrets and personal data wherever they hide."""
    for key in list(event_dict):
        if key.lower() in SENSITIVE_KEYS:
            event_dict[key] = MASK
        else:
            event_dict[key] = _clean(event_dict[key])
    return event_dict


def configure(level: int = logging.INFO) -> None:
    """JSON lines on stderr, ``request_id`` and friends bound per request."""
    # httpx logs every request line at INFO; our own "attempt" step already says it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # So do Celery's two lines per task ("received", "succeeded in"/"retry"): our
    # "completed" and "retry_scheduled" lines say the same with the request id, and the
    # two cost the worker ~5 % of its CPU per request. Failures still log (ERROR).
    for name in CELERY_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("idvcancel").bind(**bound)
