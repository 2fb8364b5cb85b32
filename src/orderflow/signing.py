"""What the signed HTTP call-outs share (the HTTP shipper and webhooks): the one rule for a
signing secret, the headers of a signed call, reading the receiver's ``Retry-After``, and the
start of an answer's body as a failure reason shows it."""

from __future__ import annotations

import base64
import email.utils
import re
import secrets
from datetime import UTC, datetime

from standardwebhooks import Webhook

from orderflow.version import __version__

# "whsec_" then the standard base64 (with its padding) of a key of 24 to 64 bytes, as the
# Standard Webhooks specification advises: 8 to 21 groups of 4 (24 to 63 bytes), or a last
# group that holds 2 or 1 bytes after 8 to 20 or 8 to 21 full ones (26 to 64 bytes).
_B64 = "[A-Za-z0-9+/]"
SECRET_PATTERN = (
    f"^whsec_(?:(?:{_B64}{{4}}){{8,21}}|(?:{_B64}{{4}}){{8,20}}{_B64}{{3}}="
    f"|(?:{_B64}{{4}}){{8,21}}{_B64}{{2}}==)$"
)
_SECRET = re.compile(SECRET_PATTERN)
_HEADERS = {"content-type": "application/json", "user-agent": f"orderflow/{__version__}"}
_BODY_START_CHARS = 200


def check_secret(secret: str) -> str:
    """`secret`; ValueError "secret: …" (never showing it) unless it is a whsec_ key."""
    if _SECRET.fullmatch(secret) is None:
        raise ValueError("secret: expected 'whsec_' and the base64 of a 24 to 64 byte key")
    return secret


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def retry_after_s(value: str | None, cap_s: float = float("inf")) -> float | None:
    """Seconds to wait per a ``Retry-After`` of seconds or an HTTP date, within [0, `cap_s`];
    None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            at = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if at.tzinfo is None:  # "-0000": UTC, per RFC 5322
            at = at.replace(tzinfo=UTC)
        seconds = (at - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), cap_s)


def signed_headers(signer: Webhook, message_id: str, at: datetime, body: bytes) -> dict[str, str]:
    """The headers of a signed JSON call: who sends it, and the Standard Webhooks three
    (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``)."""
    return {
        **_HEADERS,
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signer.sign(message_id, at, body.decode()),
    }


def body_start(body: bytes, complete: bool = True) -> str:
    """The start of an answer's `body` on one line, after a colon (nothing for an empty body),
    with "…" when there is more (`complete`: `body` is the whole of it)."""
    limit = _BODY_START_CHARS * 4
    text = " ".join(body[:limit].decode("utf-8", "replace").split())
    text = "".join(c if c.isprintable() else "?" for c in text[: _BODY_START_CHARS + 1])
    if len(text) > _BODY_START_CHARS or not complete or len(body) > limit:
        return f": {text[:_BODY_START_CHARS]}…"
    return f": {text}" if text else ""
