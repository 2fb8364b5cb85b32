"""The pure rules: URLs and secrets (the patterns are the whole rule), ids, the retry schedule
with its jitter and Retry-After, and the settings that configure delivery."""

from __future__ import annotations

import base64
import random
import re

import jsonschema_rs
import pytest

from orderflow.errors import StartupError
from orderflow.runtime import webhook_settings
from orderflow.settings import Settings
from orderflow.signing import SECRET_PATTERN, check_secret, new_secret
from orderflow.webhooks.delivery import DEFAULT_SCHEDULE_S
from orderflow.webhooks.model import (
    MAX_RETRY_AFTER_S,
    URL_PATTERN,
    check_url,
    is_webhook_id,
    message_id,
    new_webhook_id,
    parse_schedule,
    retry_delay_s,
)
from tests.receivers import SECRET


def key(size: int, *, padded: bool = True) -> str:
    encoded = base64.b64encode(bytes(range(size))).decode()
    return "whsec_" + (encoded if padded else encoded.rstrip("="))


@pytest.mark.parametrize("size", [24, 25, 26, 32, 48, 62, 63, 64])
def test_a_secret_of_24_to_64_bytes_is_accepted(size: int) -> None:
    assert check_secret(key(size)) == key(size)


@pytest.mark.parametrize(
    "secret",
    [key(23), key(65), key(32, padded=False), "whsec_", "whsec_" + "A" * 43 + "!", key(32)[6:],
     key(32) + "\n", "WHSEC_" + key(32)[6:]],
)  # fmt: skip
def test_anything_else_is_not_a_secret_and_the_message_never_shows_it(secret: str) -> None:
    with pytest.raises(ValueError, match=r"^secret: ") as refused:
        check_secret(secret)
    assert str(refused.value) == "secret: expected 'whsec_' and the base64 of a 24 to 64 byte key"


def test_generated_secrets_and_ids_follow_their_own_rules() -> None:
    assert re.fullmatch(SECRET_PATTERN, new_secret())
    assert len(base64.b64decode(new_secret()[6:])) == 32
    assert check_secret(SECRET) == SECRET
    assert is_webhook_id(new_webhook_id())
    assert not is_webhook_id("wh_xyz")
    assert new_webhook_id() != new_webhook_id()
    assert message_id(42) == "evt_42"


@pytest.mark.parametrize(
    "url",
    ["http://a", "https://a.b.c:443/x?y=z", "http://127.0.0.1:1/", "http://h_1-2.example/~p%20"],
)
def test_http_urls_are_accepted(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    "url",
    ["ftp://a/", "http://", "http:/a", "http://a b/", "http://u@a/", "http://a/#x",
     "http://a:65536/", "http://[::1]/", "http://a/\n", "http://a./", " http://a/",
     "http://" + "a" * 64 + "/", "http://b." + "a" * 64 + ".c/", "http://" + "a." * 127 + "a/",
     "http://0/", "http://0x7f000001/", "http://2130706433/", "http://0177.0.0.1/",
     "http://127.1/", "http://10.1/"],
)  # fmt: skip
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"^url: "):
        check_url(url)


URLS = [
    "http://a", "https://a.b.c:443/x?y=z", "http://127.0.0.1:1/", "http://255.255.255.255/",
    "http://1.2.3.4.example/", "http://0xdead.example/", "http://1e5/", "http://0x/",
    "http://" + "a" * 63 + "/", "http://" + "a" * 64 + "/", "http://0/", "http://0?0",
    "http://0x7f000001/", "http://0X7F.1/", "http://2130706433/", "http://0177.0.0.1/",
    "http://127.1/", "http://1.2.3.4.5/", "http://256.1.1.1/", "http://10.0.0.01/",
    "http://99999999999/", "http://a..b/", "ftp://a/", "http://[::1]/",
]  # fmt: skip


@pytest.mark.parametrize("url", URLS)
def test_the_documents_pattern_read_as_json_schema_is_the_rule(url: str) -> None:
    """What the OpenAPI document says is accepted is what is (the host's 253 characters
    aside, which its description says)."""
    document = jsonschema_rs.validator_for({"type": "string", "pattern": URL_PATTERN})
    try:
        check_url(url)
    except ValueError:
        accepted = False
    else:
        accepted = True
        url.partition("://")[2].split("/")[0].encode("idna")  # as the resolver will encode it
    assert document.is_valid(url) == accepted


def test_the_schedule_is_seconds_and_the_default_is_the_specs() -> None:
    assert parse_schedule("0.05, 1,2") == (0.05, 1.0, 2.0)
    assert DEFAULT_SCHEDULE_S == (5, 300, 1800, 7200, 18000, 36000, 36000)
    for bad in ("", "1,,2", "-1", "nan", "inf", "soon"):
        with pytest.raises(ValueError, match="seconds"):
            parse_schedule(bad)


def test_each_wait_is_the_schedules_give_or_take_10_percent_then_give_up() -> None:
    rng = random.Random(7)
    schedule = (10.0, 100.0)
    waits = [retry_delay_s(schedule, 1, None, rng) for _ in range(200)]
    assert all(9.0 <= w <= 11.0 for w in waits)
    assert max(waits) - min(waits) > 1
    assert 90.0 <= (retry_delay_s(schedule, 2, None, rng) or 0) <= 110.0
    assert retry_delay_s(schedule, 3, None, rng) is None  # spent: give up


def test_retry_after_lengthens_a_wait_up_to_an_hour() -> None:
    rng = random.Random(7)
    assert retry_delay_s((0.05,), 1, 30.0, rng) == 30.0
    assert retry_delay_s((0.05,), 1, 10**6, rng) == MAX_RETRY_AFTER_S
    assert (retry_delay_s((100.0,), 1, 1.0, rng) or 0) >= 90.0  # never shortens one
    assert retry_delay_s((100.0,), 2, 1.0, rng) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"webhook_retry_schedule": "5,soon"}, "--webhook-retry-schedule: 'soon' is not"),
        ({"webhook": "ftp://x/", "webhook_secret": SECRET}, "--webhook: expected http://"),
        ({"webhook": "http://x/"}, "--webhook-secret (a whsec_ key) is needed"),
        ({"webhook": "http://x/", "webhook_secret": "whsec_x"}, "--webhook-secret: expected"),
        (
            {"webhook": "http://x/,http://127.0.0.1:9/", "webhook_secret": SECRET},
            "--webhook: 127.0.0.1 is a loopback address; webhooks may not go to loopback,",
        ),
        (
            {"webhook": "http://169.254.169.254/", "webhook_secret": SECRET},
            "--webhook: 169.254.169.254 is a link-local address",
        ),
        ({"webhook": "http://0x7f000001/", "webhook_secret": SECRET}, "--webhook: the host"),
    ],
)
def test_bad_webhook_flags_stop_the_start_naming_the_flag(
    fields: dict[str, str], message: str
) -> None:
    with pytest.raises(StartupError) as refused:
        webhook_settings(Settings(**fields))  # type: ignore[arg-type]
    assert str(refused.value).startswith(message)
    assert "whsec_x" not in str(refused.value)


def test_allow_private_lets_the_webhook_flag_name_an_internal_address() -> None:
    settings = Settings(
        webhook="http://127.0.0.1:9/", webhook_secret=SECRET, webhook_allow_private=True
    )
    _, urls = webhook_settings(settings)
    assert urls == ["http://127.0.0.1:9/"]


def test_the_flags_configure_the_deliverer() -> None:
    settings = Settings(
        webhook="http://a/1,http://b/2",
        webhook_secret=SECRET,
        webhook_retry_schedule="1,2",
        webhook_timeout=3,
        lease_timeout=7,
    )
    deliverer, urls = webhook_settings(settings)
    assert deliverer.schedule_s == (1.0, 2.0)
    assert (deliverer.timeout_s, deliverer.lease) == (3.0, 10.0)
    assert urls == ["http://a/1", "http://b/2"]
