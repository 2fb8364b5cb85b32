"""The pure core: the state machine, order ids, names, filters and the event types."""

from __future__ import annotations

import ast
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

import orderflow.domain as domain
from orderflow.domain import (
    EVENT_TYPE,
    MAX_NAME_LENGTH,
    MAX_REASON_LENGTH,
    Event,
    EventType,
    Item,
    OrderFilter,
    OrderStatus,
    Outcome,
    advance,
    can_delete,
    check_plain,
    clean_name,
    clean_reason,
    could_end_an_id,
    ends_hold,
    id_matches_timestamp,
    is_order_id,
    is_terminal,
    new_order,
    new_order_id,
    next_status,
    order_id_floor,
    order_id_time,
    prefix_bounds,
    prefix_end,
    reversed_id,
    search_key,
    sources_of,
    storable_json,
    storable_reason,
    target_of,
    utc_instant,
)
from orderflow.errors import IllegalTransition
from tests.helpers import ALLOWED


@pytest.mark.parametrize("status", list(OrderStatus))
@pytest.mark.parametrize("event", list(Event))
def test_next_status_allows_exactly_the_table(status: OrderStatus, event: Event) -> None:
    """The transition table, move by move: every pair not in it is refused, naming the event."""
    if (status, event) in ALLOWED:
        assert next_status(status, event) is ALLOWED[status, event]
    else:
        with pytest.raises(IllegalTransition, match=event.value):
            next_status(status, event)


def test_terminal_statuses_accept_no_event() -> None:
    """Shipped and cancelled are terminal: no event leaves them; every other status has a way
    out."""
    for status in OrderStatus:
        assert is_terminal(status) == all((status, e) not in ALLOWED for e in Event)


def test_a_failed_order_is_not_terminal_an_operator_may_retry_it() -> None:
    """Failed is not terminal: an operator's RETRY takes it, and only it, back to pending."""
    assert not is_terminal(OrderStatus.FAILED)
    assert sources_of(Event.RETRY) == (OrderStatus.FAILED,)
    assert target_of(Event.RETRY) is OrderStatus.PENDING


def test_only_pending_orders_can_be_deleted() -> None:
    """Deletion is for pending orders only."""
    assert [s for s in OrderStatus if can_delete(s)] == [OrderStatus.PENDING]


def test_every_event_has_one_target_and_its_sources() -> None:
    """`sources_of` and `target_of` agree with the table for every event."""
    for event in Event:
        sources = sources_of(event)
        assert sources == tuple(s for s, e in ALLOWED if e is event)
        for source in sources:
            assert next_status(source, event) is target_of(event)
    assert set(sources_of(Event.CANCEL)) == {OrderStatus.PENDING, OrderStatus.PROCESSING}


def test_only_a_reattempt_keeps_the_hold() -> None:
    """Every event but REATTEMPT ends the holder's hold (`ends_hold`)."""
    assert [e for e in Event if not ends_hold(e)] == [Event.REATTEMPT]


def test_every_event_names_its_event_type() -> None:
    """Each event maps to its `order.*` event type; handback and release are both
    `order.released`."""
    assert set(EVENT_TYPE) == set(Event)
    assert EVENT_TYPE[Event.REATTEMPT] is EventType.ATTEMPT_FAILED
    assert EVENT_TYPE[Event.HANDBACK] is EventType.RELEASED
    assert EVENT_TYPE[Event.RELEASE] is EventType.RELEASED
    assert EVENT_TYPE[Event.RETRY] is EventType.RETRIED
    assert all(t.value.startswith("order.") for t in EventType)


def test_advance_appends_history_and_moves_updated_at() -> None:
    """`advance` returns a new order with one more history entry and a new `updated_at`; the
    original is untouched."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    order = new_order(new_order_id(at, 7), "Ada", (Item("Widget", 1),), at)
    later = at + timedelta(seconds=3)
    moved = advance(order, Event.START, later)
    failed = advance(moved, Event.FAIL, later, "timeout")
    assert [h.status for h in failed.history] == ["pending", "processing", "failed"]
    assert failed.history[-1].reason == "timeout"
    assert failed.updated_at == later
    assert failed.timestamp == at
    assert order.status is OrderStatus.PENDING  # the original is untouched
    retried = advance(failed, Event.RETRY, later, "operator")
    assert retried.status is OrderStatus.PENDING
    assert len(retried.history) == 4


def test_advance_keeps_a_shipment_unless_given_a_new_one() -> None:
    """`advance` carries the shipment result over, and sets it only when given one."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    order = advance(new_order(new_order_id(at, 1), "Ada", (Item("W", 1),), at), Event.START, at)
    shipped = advance(order, Event.SHIP, at, shipment={"tracking": "T1"})
    assert shipped.shipment == {"tracking": "T1"}
    assert order.shipment is None
    with pytest.raises(IllegalTransition):
        advance(shipped, Event.CANCEL, at)


def test_ids_sort_by_time_then_entropy() -> None:
    """Ids sort as (timestamp, entropy), encode their time, and fall within their time's id
    floor."""
    base = datetime(2026, 5, 1, tzinfo=UTC)
    times = [base + timedelta(microseconds=n) for n in (5, 1, 3, 1_000_000, 2)]
    ids = [new_order_id(t, 2**64 - 1 - n) for n, t in enumerate(times)]
    assert sorted(ids) == [i for _, i in sorted(zip(times, ids, strict=True))]
    for at, order_id in zip(times, ids, strict=True):
        assert is_order_id(order_id)
        assert order_id_time(order_id) == at
        assert id_matches_timestamp(order_id, at)
        assert not id_matches_timestamp(order_id, at + timedelta(microseconds=1))
        assert order_id_floor(at) <= order_id < order_id_floor(at + timedelta(microseconds=1))


def test_id_floor_clamps_outside_the_id_range() -> None:
    """`order_id_floor` clamps times before 1970 and beyond the id range."""
    assert order_id_floor(datetime(1900, 1, 1, tzinfo=UTC)) == "order_" + "0" * 30
    far = order_id_floor(datetime(9999, 1, 1, tzinfo=UTC))
    assert is_order_id(far)
    assert far > new_order_id(datetime(4000, 1, 1, tzinfo=UTC), 2**64 - 1)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "order_",
        "order_" + "g" * 30,
        "ORDER_" + "0" * 30,
        "order_" + "0" * 29,
        "order_" + "0" * 31,
        "order_" + "A" * 30,
        "order_" + "0" * 29 + "\x00",
        "x",
    ],
)
def test_is_order_id_rejects_malformed(value: str) -> None:
    """`is_order_id` refuses wrong prefixes, lengths, cases and characters."""
    assert not is_order_id(value)


@pytest.mark.parametrize(
    ("value", "cleaned"),
    [("  Bar  ", "Bar"), ("Bar", "Bar"), ("\u00a0Zoë\u00a0", "Zoë"), ("a b", "a b")],
)
def test_clean_name_trims(value: str, cleaned: str) -> None:
    """`clean_name` returns the name trimmed (non-breaking spaces included)."""
    assert clean_name(value, "name") == cleaned


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "must not be blank"),
        ("   ", "must not be blank"),
        ("\u200b\u00a0", "must not be blank"),
        ("Bar\x00", "must not contain control characters"),
        ("a\nb", "must not contain control characters"),
        ("lone \ud800", "must not contain control characters"),
        ("x" * (MAX_NAME_LENGTH + 1), f"must be at most {MAX_NAME_LENGTH} characters"),
    ],
)
def test_clean_name_refuses_names_naming_the_field(value: str, problem: str) -> None:
    """`clean_name` refuses blank, too long, control-character and lone-surrogate names, as
    "<field>: <problem>"."""
    with pytest.raises(ValueError, match=f"^customer: {problem}$"):
        clean_name(value, "customer")


def test_clean_name_counts_the_length_as_sent_before_trimming() -> None:
    """The length limit applies to the name as sent, before trimming."""
    assert clean_name("x" * MAX_NAME_LENGTH, "name") == "x" * MAX_NAME_LENGTH
    with pytest.raises(ValueError, match="at most"):
        clean_name(" " + "x" * MAX_NAME_LENGTH, "name")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "must not be blank"),
        ("\u200b ", "must not be blank"),
        ("a\x00b", "must not contain control characters"),
        ("tab\there", "must not contain control characters"),
        ("lone \udc00", "must not contain control characters"),
        ("r" * (MAX_REASON_LENGTH + 1), f"must be at most {MAX_REASON_LENGTH} characters"),
    ],
)
def test_an_operators_reason_follows_the_name_rules(value: str, problem: str) -> None:
    """A reason with a NUL was stored as it came in memory, and was a 503 on PostgreSQL. Now
    a reason follows the rules of names (up to MAX_REASON_LENGTH): refused naming the field,
    and stored trimmed."""
    with pytest.raises(ValueError, match=f"^reason: {problem}$"):
        clean_reason(value)
    assert clean_reason("  carrier back ") == "carrier back"
    assert clean_reason("r" * MAX_REASON_LENGTH) == "r" * MAX_REASON_LENGTH


def test_a_text_to_search_for_is_kept_as_sent_without_control_characters() -> None:
    """`check_plain` (reason_contains): kept as sent, spaces included; control characters and
    lone surrogates refused."""
    assert check_plain(" carrier ", "reason_contains") == " carrier "
    for bad in ("\x00", "a\nb", "\ud800"):
        with pytest.raises(ValueError, match=r"^reason_contains: must not contain control"):
            check_plain(bad, "reason_contains")


def test_a_shippers_reason_becomes_one_storable_line() -> None:
    """`storable_reason`: NUL, other control characters and lone surrogates become U+FFFD, a
    line break or a tab a space; a clean reason is the very string."""
    clean = "HTTP 503 from receiver: busy"
    assert storable_reason(clean) is clean
    assert storable_reason("a\x00b\ud800c\x7fd") == "a\ufffdb\ufffdc\ufffdd"
    assert storable_reason("line one\r\nline two\tend") == "line one  line two end"
    assert storable_reason("Zoë\u00a0\u200b") == "Zoë\u00a0\u200b"  # printable or not, shown


def test_a_shipment_result_loses_what_no_store_can_hold_in_every_string_and_key() -> None:
    """`storable_json`: NUL and lone surrogates become U+FFFD in strings and keys at any
    depth; other values, and a result with nothing to clean, are left as they are."""
    result = {"tracking": "t-1", "n": 2, "ok": True, "none": None, "tags": ["a", {"b": 1.5}]}
    assert storable_json(result) is result
    dirty = {"x": "a\x00b", "k\x00": [1, "\ud800", {"deep\x00": ("c\x00",)}], "tab": "a\tb"}
    assert storable_json(dirty) == {
        "x": "a\ufffdb",
        "k\ufffd": [1, "\ufffd", {"deep\ufffd": ["c\ufffd"]}],
        "tab": "a\tb",
    }


def test_an_outcome_is_storable_whatever_the_shipper_said() -> None:
    """`Outcome` cleans its reason and result as it is made, so no store refuses it."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    outcome = Outcome("o", 1, Event.FAIL, at, "a\x00b\nc", {"x": "\x00"})
    assert (outcome.reason, outcome.shipment) == ("a\ufffdb c", {"x": "\ufffd"})
    plain = Outcome("o", 1, Event.SHIP, at, None, {"x": "y"})
    assert (plain.reason, plain.shipment) == (None, {"x": "y"})


@pytest.mark.parametrize(
    "at",
    [
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14))),
        datetime(1, 1, 1, 0, 0, tzinfo=timezone(timedelta(minutes=1))),
    ],
)
def test_a_clients_time_without_a_utc_time_is_out_of_range(at: datetime) -> None:
    """`utc_instant`: a time in range with its offset but not in UTC is a ValueError naming
    the field (the bulk actions answered 500 with an OverflowError)."""
    with pytest.raises(ValueError, match=r"^from: out of range$"):
        utc_instant(at, "from")


def test_a_clients_time_is_taken_to_utc_and_without_an_offset_is_utc() -> None:
    """`utc_instant`: an offset is applied; no offset means UTC."""
    east = datetime(2026, 1, 1, 1, 30, tzinfo=timezone(timedelta(hours=1)))
    assert utc_instant(east, "to") == datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    assert utc_instant(datetime(2026, 1, 1), "to") == datetime(2026, 1, 1, tzinfo=UTC)
    edge = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=-14)))
    assert utc_instant(edge, "to") == datetime(1, 1, 1, 14, tzinfo=UTC)


def test_order_filter_matches_reasons_case_insensitively() -> None:
    """`OrderFilter.reason_matches`: case-insensitive containment; no reason never matches a
    condition."""
    assert OrderFilter().reason_matches(None)
    where = OrderFilter(reason_contains="TimeOut")
    assert where.reason_matches("carrier timeout after 30s")
    assert where.reason_matches("TIMEOUT")
    assert not where.reason_matches("HTTP 503")
    assert not where.reason_matches(None)


def test_domain_module_imports_nothing_but_pure_modules() -> None:
    """domain.py imports no I/O, event loop, driver or web framework."""
    tree = ast.parse(Path(domain.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    allowed = {"__future__", "datetime", "enum", "re", "typing", "msgspec", "orderflow.errors"}
    assert imported <= allowed, imported - allowed


def test_importing_the_domain_loads_no_event_loop_nor_io() -> None:
    """Regression: the purity check ended in `"asyncio" not in sys.modules or …`, which could
    not fail; a fresh interpreter tells what importing the domain really pulls in."""
    # What the import adds to what the interpreter had (coverage, when it measures the child,
    # brings threads and sockets of its own before the probe starts).
    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import orderflow.domain\n"
        "print(' '.join(sorted(m for m in ('asyncio', 'socket', 'threading', 'sqlite3',"
        " 'asyncpg', 'aiohttp', 'httpx') if m in sys.modules and m not in before)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert loaded == []


# -- search keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key"),
    [("Straße", "strasse"), ("ÆRØSKØBING", "ærøskøbing"), ("ΣΊΣΥΦΟΣ", "σίσυφοσ"), ("ﬁne", "fine")],
)
def test_the_search_key_is_the_casefold(name: str, key: str) -> None:
    assert search_key(name) == key


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        ("abc", "abd"),
        ("ß", "à"),
        ("a\U0010ffff", "b"),  # the last code point has no successor: the one before goes up
        ("\U0010ffff", None),  # nothing is above every string that starts so
        ("a\ud7ff", "a\ue000"),  # no surrogate is ever stored: their block is skipped
    ],
)
def test_a_prefix_ends_at_the_least_string_above_all_that_start_with_it(
    prefix: str, end: str | None
) -> None:
    assert prefix_end(prefix) == end
    assert prefix_bounds(prefix) == ((prefix,) if end is None else (prefix, end))
    for longer in (prefix, prefix + "\x00", prefix + "zz", prefix + "\U0010ffff" * 3):
        assert longer >= prefix
        assert end is None or longer < end


def test_a_tail_with_a_character_no_id_has_can_end_none() -> None:
    order_id = new_order_id(datetime(2026, 1, 1, tzinfo=UTC), 5)
    assert could_end_an_id(order_id[-8:])
    assert could_end_an_id(order_id)
    assert not could_end_an_id("0000000G")
    assert not could_end_an_id("0000 0000")
    assert reversed_id(order_id)[::-1] == order_id
    assert reversed_id(order_id).startswith(reversed_id(order_id[-8:]))
