"""Webhook subscriptions, their claims and delivery records, and the rules they follow: what a
URL and a secret may be, which events a subscription wants, when a failed delivery is tried
again (pure: no I/O).

A subscription's *cursor* is the seq of the event log up to which every event was dealt with:
delivered, skipped as not wanted, or given up. Delivery state is the cursor plus, per event
still to be tried again, a `Retry` (an ordered subscription has at most one: the event right
after its cursor).
"""

from __future__ import annotations

import enum
import random
import re
import secrets
import socket
from collections.abc import Sequence
from datetime import datetime

import msgspec

from orderflow.domain import EventType

WEBHOOK_ID_PREFIX = "wh_"
WEBHOOK_ID_PATTERN = "^wh_[0-9a-f]{24}$"
MAX_URL_LENGTH = 2000
KEEP_DELIVERIES = 100  # attempts kept per subscription, the newest
MAX_RETRY_AFTER_S = 3600.0  # a receiver's Retry-After is honoured up to this
JITTER = 0.1  # each wait of the schedule is stretched or shrunk by up to this fraction

MAX_HOST_LENGTH = 253  # DNS: at most 253 characters, each label at most 63

# http(s); a host: an IPv4 address as four decimal numbers, or a name of labels of 1 to 63
# characters that is not a number in disguise (resolvers read ``0``, ``2130706433``,
# ``0x7f000001``, ``0177.0.0.1`` and ``127.1`` as addresses; the HTTP client refuses any other
# host of digits and dots); no user info, no IPv6 literal; an optional port from 1 to 65535;
# then an optional path and query of printable ASCII (no fragment). What the pattern cannot say,
# `check_url` adds: the host is at most 253 characters. Where the URL may lead (no internal
# address) is `destinations.py`'s.
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_END = r"(?=[:/?]|$)"  # of the host
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = r"(?:" + _OCTET + r"\.){3}" + _OCTET + _END
_NUMBER = r"(?:0[xX][0-9A-Fa-f]+|[0-9]+)"
_NUMERIC = r"(?:[0-9.]+|(?:" + _NUMBER + r"\.){0,3}" + _NUMBER + r")" + _END
_LABEL = r"[A-Za-z0-9_-]{1,63}"
_NAME = r"(?!" + _NUMERIC + r")" + _LABEL + r"(?:\." + _LABEL + r")*"
URL_PATTERN = r"^https?://(?:" + _IPV4 + "|" + _NAME + r")(?::" + _PORT + r")?(?:[/?][!\x22$-~]*)?$"
_URL = re.compile(URL_PATTERN)
_ANY_HOST = re.compile(r"^https?://([A-Za-z0-9_.-]+)(?::" + _PORT + r")?(?:[/?][!\x22$-~]*)?$")
_WEBHOOK_ID = re.compile(WEBHOOK_ID_PATTERN)


class Subscription(msgspec.Struct, frozen=True, gc=False):
    """A webhook subscription as stored.

    Attributes:
        types: the event types it wants; empty: every type.
        ordered: deliver strictly one event at a time in seq order (a failing event holds the
            ones after it back); false lets later events go past a failing one.
        cursor: the seq up to which events were delivered, skipped or given up.
        retry_at: when a failed delivery is due again (the earliest, when there are several).
    """

    id: str
    url: str
    types: tuple[EventType, ...]
    secret: str
    ordered: bool
    created_at: datetime
    cursor: int
    disabled_at: datetime | None = None
    disabled_reason: str | None = None
    retry_at: datetime | None = None

    def wants(self, type: EventType) -> bool:
        return not self.types or type in self.types


class Retry(msgspec.Struct, frozen=True, gc=False):
    """An event of a subscription to be tried again, after `attempt` failed attempts."""

    seq: int
    attempt: int


class Claim(msgspec.Struct, frozen=True, gc=False):
    """A subscription handed to one deliverer: only it may deliver the subscription's events
    until it releases the claim or its lease runs out. Every write it makes names
    (`owner`, `token`), so a holder whose claim was lost or replayed over is refused.

    Attributes:
        retries: the subscription's retries that are due, oldest event first.
    """

    subscription: Subscription
    owner: str
    token: int
    retries: tuple[Retry, ...] = ()


class DeliveryOutcome(enum.StrEnum):
    """What became of an attempt (or of events nobody attempted)."""

    DELIVERED = "delivered"  # the receiver answered 2xx
    RETRYING = "retrying"  # it failed; the event is tried again later
    GIVEN_UP = "given_up"  # it failed and the schedule is spent: the event is skipped
    DISABLED = "disabled"  # the receiver answered 410: the subscription is disabled
    PRUNED = "pruned"  # events were pruned from the log before they could be delivered


class DeliveryRecord(msgspec.Struct, frozen=True, gc=False):
    """One attempt at delivering one event (the deliveries log keeps the newest 100).

    Attributes:
        webhook_id: the ``webhook-id`` header sent: ``evt_`` + the event's seq.
        attempt: 1 for the first attempt at this event, 2 for the first retry, …
        status_code: the receiver's HTTP status, None when there was no answer.
        latency_ms: from sending the request to the answer's headers (or the failure).
        error: why it failed, None when delivered.
    """

    seq: int
    webhook_id: str
    attempt: int
    status_code: int | None
    latency_ms: float
    error: str | None
    outcome: DeliveryOutcome
    at: datetime


class Settlement(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a holder writes about its subscription, in one atomic step checked against its
    claim; every settlement also extends the claim's lease.

    Attributes:
        cursor: the new cursor (the current one to leave it).
        seq: the event whose retry is kept (`retry_attempt` set) or forgotten (None: neither).
        retry_attempt: keep a retry of `seq` after this many failed attempts, due in
            `retry_in_s` seconds.
        disable: disable the subscription, saying why.
        record: an attempt to add to the deliveries log.
    """

    cursor: int
    seq: int | None = None
    retry_attempt: int | None = None
    retry_in_s: float = 0.0
    disable: str | None = None
    record: DeliveryRecord | None = None


def message_id(seq: int) -> str:
    """The ``webhook-id`` of the event `seq`: the same for every attempt and every replay."""
    return f"evt_{seq}"


def new_webhook_id() -> str:
    return WEBHOOK_ID_PREFIX + secrets.token_hex(12)


def is_webhook_id(value: str) -> bool:
    return _WEBHOOK_ID.fullmatch(value) is not None


def check_url(url: str) -> str:
    """`url`; ValueError "url: …" unless it is an http(s) URL the rules above accept, the
    message saying what is wrong. The host's limits are what IDNA encoding asks (as the
    resolver does it): labels of 1 to 63 characters, at most 253 in all."""
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"url: must be at most {MAX_URL_LENGTH} characters")
    if _URL.fullmatch(url) is None:
        raise ValueError(f"url: {_why_not(url)}")
    if len(url_host(url)) > MAX_HOST_LENGTH:
        raise ValueError(f"url: the host must be at most {MAX_HOST_LENGTH} characters")
    return url


def _why_not(url: str) -> str:
    """What is wrong with `url`, which URL_PATTERN refuses."""
    shaped = _ANY_HOST.fullmatch(url)
    labels = [] if shaped is None else shaped.group(1).split(".")
    if not labels or not all(labels):
        return "expected http://host[:port][/path] or https://… (no user info, no fragment)"
    if any(len(label) > 63 for label in labels):
        return "each label of the host (between dots) must be at most 63 characters"
    host = ".".join(labels)
    try:
        full = socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return f"the host {host} is not an IPv4 address: write one as four numbers from 0 to 255"
    return f"the host {host} is an IPv4 address in a short form: write it as {full}"


def url_host(url: str) -> str:
    """The host of a URL that matches URL_PATTERN."""
    rest = url.partition("://")[2]
    end = min((at for at in (rest.find(c) for c in ":/?") if at >= 0), default=len(rest))
    return rest[:end]


def parse_schedule(text: str) -> tuple[float, ...]:
    """The waits of a retry schedule, in seconds, from "5,300,1800"; ValueError if one is not a
    number of at least 0, or there is none."""
    waits = []
    for item in text.split(","):
        try:
            wait = float(item)
        except ValueError:
            raise ValueError(f"{item.strip()!r} is not a number of seconds") from None
        if not 0 <= wait < float("inf"):
            raise ValueError(f"{item.strip()!r}: each wait must be a number of seconds >= 0")
        waits.append(wait)
    return tuple(waits)


def retry_delay_s(
    schedule: Sequence[float], attempt: int, retry_after_s: float | None, rng: random.Random
) -> float | None:
    """How long to wait after failed attempt number `attempt` (1 for the first) before the
    next one: the schedule's wait for it, give or take JITTER, and at least the receiver's
    `retry_after_s` (capped at MAX_RETRY_AFTER_S). None: the schedule is spent, give up."""
    if attempt > len(schedule):
        return None
    delay_s = schedule[attempt - 1] * rng.uniform(1 - JITTER, 1 + JITTER)
    if retry_after_s is not None:
        delay_s = max(delay_s, min(retry_after_s, MAX_RETRY_AFTER_S))
    return delay_s
