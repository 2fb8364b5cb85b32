"""Logging configuration: one root handler, one line per record, as text or JSON.

A message is one line whatever it carries (a shipper's words may hold a NUL, a line break or a
lone surrogate): text escapes control characters and lone surrogates as Python does in a
string's repr (``\x00``, ``\n``, ``\ud800``); JSON escapes control characters itself and
writes a lone surrogate, which UTF-8 cannot encode, as U+FFFD. Only a traceback takes lines of
its own (text), and only a bug's.

`configure_logging` also returns the dict granian takes as `log_dictconfig`, so the server's own
loggers (`_granian`, `granian.access`) print through the same handler in the same format.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any, Literal, TextIO

import msgspec

__all__ = ["JSONFormatter", "TextFormatter", "configure_logging"]

# Everything a LogRecord carries by itself; any other attribute came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_GRANIAN_LOGGERS = ("_granian", "granian.access")
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class _LineFormatter(logging.Formatter):
    """Shared by both formats: an RFC 3339 UTC timestamp and the record's `extra=` fields."""

    def __init__(self) -> None:
        super().__init__()
        # (whole second, its rendering): a service logs many lines per second, strftime once.
        self._second: tuple[int, str] = (-1, "")

    def timestamp(self, created: float) -> str:
        """`created` (seconds since the epoch) as `2026-11-25T12:00:00.123456Z`."""
        second, micros = divmod(round(created * 1_000_000), 1_000_000)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached
        return f"{cached[1]}.{micros:06d}Z"

    @staticmethod
    def fields(record: logging.LogRecord) -> dict[str, Any]:
        """The attributes passed as `extra=`, in the order given (empty for most records)."""
        attrs = record.__dict__
        if _STANDARD_ATTRS.issuperset(attrs):
            return {}
        return {key: value for key, value in attrs.items() if key not in _STANDARD_ATTRS}

    def exception(self, record: logging.LogRecord) -> str:
        """The formatted traceback, or "" (cached on the record, as logging.Formatter does)."""
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        return record.exc_text or ""


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


def _one_line(text: str) -> str:
    """`text` with its control characters and lone surrogates escaped (``\n``, ``\x00``)."""
    return text if text.isprintable() else _UNPRINTABLE.sub(_escaped, text)


def _encodable(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text) if not text.isprintable() else text


class TextFormatter(_LineFormatter):
    """`<time> <LEVEL> <logger> <message> key=value…`; a traceback follows on the next lines.

    A value is shown as `str(value)`, repr'd when that is empty or holds a space, a quote or a
    non-printable character (so a line stays one line and splits on spaces).
    """

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.timestamp(record.created)} {record.levelname} {record.name} "
        line += _one_line(record.getMessage())
        for key, value in self.fields(record).items():
            line += f" {key}={_text_value(value)}"
        if exception := self.exception(record):
            line += f"\n{exception}"
        if record.stack_info:
            line += f"\n{self.formatStack(record.stack_info)}"
        return line


class JSONFormatter(_LineFormatter):
    """One JSON object per line: time, level (lower case), logger, message, then the `extra=`
    fields (a field named like one of those four is dropped), `exc_info` when there is an
    exception and `stack_info` when asked for. Values JSON cannot hold are str()'d."""

    _encoder = msgspec.json.Encoder(enc_hook=str)

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": self.timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _encodable(record.getMessage()),
        }
        if fields := self.fields(record):
            for key, value in fields.items():
                payload.setdefault(key, value)
        if exception := self.exception(record):
            payload["exc_info"] = exception
        if record.stack_info:
            payload["stack_info"] = self.formatStack(record.stack_info)
        try:
            encoded = self._encoder.encode(payload)
        except (msgspec.EncodeError, TypeError, ValueError, RecursionError):
            # A field msgspec refuses outright (a cycle, a lone surrogate): fall back to str().
            encoded = self._encoder.encode(
                {key: _encodable(str(value)) for key, value in payload.items()}
            )
        return encoded.decode()


def configure_logging(
    level: str, fmt: Literal["text", "json"] = "text", *, stream: TextIO | None = None
) -> dict[str, Any]:
    """Send every log record at `level` or above to `stream` (default: sys.stderr), one line each.

    `level` is "debug", "info", "warning", "error" or "critical"; `fmt` is "text" or "json".
    Handlers on the root logger from before (a previous call, basicConfig) are removed and closed.

    Returns the `log_dictconfig` to hand granian: it routes `_granian` and `granian.access` to
    the root handler and defines no handlers of granian's own, so nothing prints twice. It omits
    "root", so granian's dictConfig leaves the root handler in place. granian overwrites the
    `_granian` level in it with its own `log_level`. Raises ValueError on an unknown level/fmt.
    """
    numeric_level = _LEVELS.get(level.lower())
    formatter = {"text": TextFormatter, "json": JSONFormatter}.get(fmt)
    if numeric_level is None or formatter is None:
        raise ValueError(f"unknown log level {level!r} or format {fmt!r}")

    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(formatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)

    level_name = logging.getLevelName(numeric_level)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        # granian merges this dict into its own with a shallow update: empty these two, or its
        # stdout handlers and formatters would still be built.
        "formatters": {},
        "handlers": {},
        "loggers": {
            name: {"handlers": [], "level": level_name, "propagate": True}
            for name in _GRANIAN_LOGGERS
        },
    }


def _text_value(value: object) -> str:
    text = str(value)
    if not text or " " in text or '"' in text or "'" in text or not text.isprintable():
        return repr(text)
    return text
