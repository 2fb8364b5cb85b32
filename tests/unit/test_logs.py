"""Logging configuration: text and JSON lines, extras, tracebacks, levels, and granian's loggers."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from granian.log import LogLevels
from granian.log import configure_logging as granian_configure_logging

from orderflow.logs import JSONFormatter, TextFormatter, configure_logging

TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"
GRANIAN_LOGGERS = ("_granian", "granian.access")

log = logging.getLogger("orderflow.processor")


@pytest.fixture(autouse=True)
def pristine_logging() -> Iterator[None]:
    """Take pytest's handlers off the root logger for the test, and put everything back after."""
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved_granian = {
        name: (lg.handlers[:], lg.level, lg.propagate, lg.disabled)
        for name in GRANIAN_LOGGERS
        for lg in [logging.getLogger(name)]
    }
    for handler in saved_root[0]:
        root.removeHandler(handler)
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    root.handlers[:], root.level = saved_root
    for name, (handlers, level, propagate, disabled) in saved_granian.items():
        lg = logging.getLogger(name)
        lg.handlers[:], lg.level, lg.propagate, lg.disabled = handlers, level, propagate, disabled


@pytest.fixture
def stream() -> io.StringIO:
    return io.StringIO()


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def record_at(created: float) -> logging.LogRecord:
    return logging.makeLogRecord({"name": "orderflow.processor", "msg": "hi", "created": created})


def test_text_line_is_time_level_logger_message(stream: io.StringIO) -> None:
    configure_logging("info", stream=stream)
    log.info("order %s shipped", "o-1")
    assert re.fullmatch(rf"{TIME} INFO orderflow\.processor order o-1 shipped\n", stream.getvalue())


def test_text_line_appends_extras_as_key_value_pairs(stream: io.StringIO) -> None:
    configure_logging("info", stream=stream)
    log.warning("retry", extra={"order_id": "o-1", "attempt": 2, "reason": "no stock", "q": 'a"b'})
    [line] = lines(stream)
    assert line.split(" ", 1)[1] == (
        "WARNING orderflow.processor retry order_id=o-1 attempt=2 reason='no stock' q='a\"b'"
    )


def test_text_values_that_would_break_the_line_are_reprd(stream: io.StringIO) -> None:
    configure_logging("info", stream=stream)
    log.info("odd", extra={"empty": "", "multi": "a\nb"})
    [line] = lines(stream)
    assert line.endswith(r"odd empty='' multi='a\nb'")


def test_a_message_carrying_a_shippers_words_stays_one_line_in_both_formats(
    stream: io.StringIO,
) -> None:
    """A failure reason logged as it came from a shipper (a NUL, a line break, a lone
    surrogate) broke the text line (a NUL byte in the log, a second line) and made the JSON
    formatter fail ("--- Logging error ---" and a traceback). Now text escapes them as a
    string's repr does, and JSON writes what it can encode."""
    configure_logging("info", stream=stream)
    log.warning("order_id=%s failed: %s", "o-1", "a\x00b\nc\ud800d")
    [line] = lines(stream)
    assert line.endswith(r"failed: a\x00b\nc\ud800d")
    stream.seek(0)
    stream.truncate()
    configure_logging("info", "json", stream=stream)
    log.warning("order_id=%s failed: %s", "o-1", "a\x00b\nc\ud800d", extra={"why": "\ud800"})
    [line] = lines(stream)
    entry = json.loads(line)
    assert entry["message"] == "order_id=o-1 failed: a\x00b\nc\ufffdd"
    assert entry["why"] == "\ufffd"


def test_text_traceback_follows_on_the_next_lines(stream: io.StringIO) -> None:
    configure_logging("info", stream=stream)
    try:
        raise ValueError("bad weight")
    except ValueError:
        log.exception("shipment failed", extra={"order_id": "o-1"})
    first, *rest = lines(stream)
    assert first.endswith("ERROR orderflow.processor shipment failed order_id=o-1")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: bad weight"


def test_json_line_has_exactly_the_documented_keys(stream: io.StringIO) -> None:
    configure_logging("info", "json", stream=stream)
    log.info("order %s shipped", "o-1")
    [line] = lines(stream)
    entry = json.loads(line)
    assert list(entry) == ["time", "level", "logger", "message"]
    assert re.fullmatch(TIME, entry["time"])
    assert entry | {"time": None} == {
        "time": None,
        "level": "info",
        "logger": "orderflow.processor",
        "message": "order o-1 shipped",
    }


def test_json_extras_are_fields_and_unserialisable_values_are_strd(stream: io.StringIO) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    cycle: list[object] = []
    cycle.append(cycle)
    configure_logging("info", "json", stream=stream)
    log.info("retry", extra={"order_id": "o-1", "attempt": 2, "what": Opaque(), "level": "x"})
    log.info("cycle", extra={"order_id": "o-2", "cycle": cycle})
    first, second = map(json.loads, lines(stream))
    assert list(first) == ["time", "level", "logger", "message", "order_id", "attempt", "what"]
    assert (first["level"], first["order_id"], first["attempt"], first["what"]) == (
        "info",
        "o-1",
        2,
        "opaque!",
    )
    assert (second["message"], second["order_id"], second["cycle"]) == ("cycle", "o-2", "[[...]]")


def test_json_exception_adds_the_formatted_traceback(stream: io.StringIO) -> None:
    configure_logging("info", "json", stream=stream)
    try:
        raise ValueError("bad weight")
    except ValueError:
        log.exception("shipment failed", extra={"order_id": "o-1"})
    [line] = lines(stream)
    entry = json.loads(line)
    assert list(entry) == ["time", "level", "logger", "message", "order_id", "exc_info"]
    assert entry["level"] == "error"
    assert entry["exc_info"].startswith("Traceback (most recent call last):\n")
    assert entry["exc_info"].endswith("ValueError: bad weight")


@pytest.mark.parametrize("formatter", [TextFormatter(), JSONFormatter()], ids=["text", "json"])
@pytest.mark.parametrize(
    ("created", "expected"),
    [
        (1795608000.123456, "2026-11-25T12:00:00.123456Z"),
        (1795608000.0, "2026-11-25T12:00:00.000000Z"),
        (1795608000.9999996, "2026-11-25T12:00:01.000000Z"),
        (0.5, "1970-01-01T00:00:00.500000Z"),
    ],
)
def test_time_is_rfc3339_utc_with_microseconds(
    formatter: logging.Formatter, created: float, expected: str
) -> None:
    """A fraction that rounds up to a whole second carries into the seconds."""
    assert expected in formatter.format(record_at(created))


def test_the_cached_second_follows_the_clock_both_ways() -> None:
    formatter = TextFormatter()
    stamps = [formatter.format(record_at(t)).split()[0] for t in (1795608000.5, 1795608061.5)]
    stamps.append(formatter.format(record_at(1795608000.25)).split()[0])
    assert stamps == [
        "2026-11-25T12:00:00.500000Z",
        "2026-11-25T12:01:01.500000Z",
        "2026-11-25T12:00:00.250000Z",
    ]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_records_below_the_level_are_dropped(fmt: str, stream: io.StringIO) -> None:
    configure_logging("warning", fmt, stream=stream)  # type: ignore[arg-type]
    log.debug("debug")
    log.info("info")
    log.warning("warning")
    log.error("error")
    if fmt == "json":
        assert [json.loads(line)["message"] for line in lines(stream)] == ["warning", "error"]
    else:
        assert [line.rsplit(" ", 1)[1] for line in lines(stream)] == ["warning", "error"]


def test_configuring_twice_leaves_one_handler_writing_to_the_new_stream(
    stream: io.StringIO,
) -> None:
    first = io.StringIO()
    configure_logging("info", stream=first)
    configure_logging("debug", "json", stream=stream)
    log.debug("once")
    assert len(logging.getLogger().handlers) == 1
    assert first.getvalue() == ""
    assert json.loads(stream.getvalue())["message"] == "once"


def test_unknown_level_or_format_is_refused() -> None:
    with pytest.raises(ValueError, match="verbose"):
        configure_logging("verbose")
    with pytest.raises(ValueError, match="xml"):
        configure_logging("info", "xml")  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_granian_lines_come_out_once_in_our_format_on_our_stream(
    fmt: str, stream: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    dictconfig = configure_logging("info", fmt, stream=stream)  # type: ignore[arg-type]
    [handler] = logging.getLogger().handlers
    granian_configure_logging(LogLevels.info, dictconfig)

    assert logging.getLogger().handlers == [handler]  # dictConfig left the root alone
    logging.getLogger("_granian").info("Starting granian")
    logging.getLogger("granian.access").info("%(method)s %(path)s", {"method": "GET", "path": "/"})
    logging.getLogger("granian.access").debug("below the level")
    log.info("ours still logs")  # granian's dictConfig must not disable existing loggers

    if fmt == "text":
        assert re.fullmatch(rf"{TIME} INFO _granian Starting granian", lines(stream)[0])
        assert re.fullmatch(rf"{TIME} INFO granian\.access GET /", lines(stream)[1])
        assert lines(stream)[2].endswith(" INFO orderflow.processor ours still logs")
    else:
        entries = [json.loads(line) for line in lines(stream)]
        assert [(e["logger"], e["message"]) for e in entries] == [
            ("_granian", "Starting granian"),
            ("granian.access", "GET /"),
            ("orderflow.processor", "ours still logs"),
        ]
    assert len(lines(stream)) == 3
    assert capsys.readouterr() == ("", "")


def test_granian_dictconfig_routes_to_root_and_builds_no_handlers_of_its_own() -> None:
    """granian merges with a shallow update: without empty handlers and formatters, its two
    stdout StreamHandlers would still be built (unused, but one `loggers` edit from printing)."""
    dictconfig = configure_logging("info", stream=io.StringIO())
    assert "root" not in dictconfig
    assert dictconfig == {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {},
        "handlers": {},
        "loggers": {
            name: {"handlers": [], "level": "INFO", "propagate": True} for name in GRANIAN_LOGGERS
        },
    }


def test_granian_dictconfig_carries_our_level() -> None:
    dictconfig = configure_logging("warning", stream=io.StringIO())
    granian_configure_logging(LogLevels.warning, dictconfig)
    assert logging.getLogger("granian.access").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("_granian").getEffectiveLevel() == logging.WARNING
