"""Where webhooks may go: the address rule (IPv4, IPv6, and IPv4 inside IPv6), its check when
subscribing (literal addresses, names through `Names`: no DNS server is asked), the socket
factory that checks every address dialled, and `--webhook` at start. Nothing is dialled here."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from orderflow.errors import StartupError
from orderflow.webhooks.destinations import Destinations, RefusedDestination, forbidden_kind
from tests.conftest import RuntimeFactory
from tests.receivers import SECRET, Names


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("10.0.0.1", "private"),
        ("172.16.0.1", "private"), ("172.31.255.254", "private"), ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"), ("100.64.0.1", "shared"),
        ("100.127.255.254", "shared"), ("0.0.0.0", "unspecified"), ("0.1.2.3", "private"),
        ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"),
        ("255.255.255.255", "reserved"), ("240.0.0.1", "reserved"),
        ("192.0.2.1", "private"), ("198.18.0.1", "private"),
        ("::1", "loopback"), ("::", "unspecified"), ("fe80::1", "link-local"),
        ("fe80::1%1", "link-local"), ("fc00::1", "private"), ("fd12:3456::1", "private"),
        ("fec0::1", "site-local"), ("ff02::1", "multicast"), ("2001:db8::1", "private"),
        ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"), ("64:ff9b::a00:1", "private"),
        ("64:ff9b::7f00:1", "loopback"), ("2002:7f00:1::1", "6to4 (127.0.0.1)"),
        ("2002:a00:1::1", "6to4 (10.0.0.1)"), ("::7f00:1", "reserved"),
        ("64:ff9b:1::a00:1", "reserved"),
    ],
)  # fmt: skip
def test_internal_addresses_are_forbidden_saying_which_kind(address: str, kind: str) -> None:
    assert forbidden_kind(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.0", "2606:4700::1111",
     "::ffff:93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::1"],
)  # fmt: skip
def test_public_addresses_are_allowed(address: str) -> None:
    assert forbidden_kind(ipaddress.ip_address(address)) is None


async def test_a_name_is_refused_if_any_of_its_addresses_is_forbidden() -> None:
    names = Names({"a.test": ["93.184.216.34", "2606:4700::1111"], "b.test": ["8.8.8.8", "::1"]})
    destinations = Destinations(resolver=names)
    await destinations.check("https://a.test/hook")
    with pytest.raises(ValueError, match=r"^url: b\.test resolves to ::1, a loopback address; "):
        await destinations.check("https://b.test:8443/hook")
    assert names.asked == ["a.test", "b.test"]


async def test_a_name_that_does_not_resolve_yet_or_in_time_is_accepted() -> None:
    class Stuck(Names):
        async def resolve(self, *args: object, **kwargs: object) -> list:  # type: ignore[override]
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    await Destinations(resolver=Names()).check("http://nowhere.test/")
    await Destinations(resolver=Stuck(), timeout_s=0.05).check("http://slow.test/")


async def test_allow_private_checks_nothing_and_asks_no_resolver() -> None:
    names = Names({"internal.test": ["10.0.0.1"]})
    destinations = Destinations(allow_private=True, resolver=names)
    await destinations.check("http://internal.test/")
    await destinations.check("http://127.0.0.1:5432/")
    assert names.asked == []
    assert destinations.refusal("10.0.0.1") is None


async def test_the_resolver_refuses_a_name_with_a_forbidden_address_and_passes_the_rest() -> None:
    names = Names(
        {"public.test": ["93.184.216.34"], "internal.test": ["93.184.216.34", "10.9.8.7"]}
    )
    destinations = Destinations(resolver=names)
    [found] = await destinations.resolve("public.test", 443, socket.AF_UNSPEC)
    assert (found["host"], found["port"]) == ("93.184.216.34", 443)
    with pytest.raises(RefusedDestination) as refused:
        await destinations.resolve("internal.test", 443, socket.AF_UNSPEC)
    assert str(refused.value) == (
        "destination refused: internal.test resolves to 10.9.8.7, a private address"
    )
    with pytest.raises(OSError, match="not a valid host name"):
        await Destinations().resolve("a" * 64, 80, socket.AF_UNSPEC)  # refused before any lookup


@pytest.mark.parametrize(
    ("family", "address", "why"),
    [
        (socket.AF_INET, ("127.0.0.1", 80), "127.0.0.1 is a loopback address"),
        (socket.AF_INET, ("10.0.0.1", 80), "10.0.0.1 is a private address"),
        (socket.AF_INET6, ("::1", 80, 0, 0), "::1 is a loopback address"),
        (socket.AF_INET6, ("::ffff:192.168.0.1", 80, 0, 0), "a private address"),
    ],
)
def test_the_socket_factory_refuses_to_open_a_socket_to_a_forbidden_address(
    family: int, address: tuple[object, ...], why: str
) -> None:
    destinations = Destinations()
    with pytest.raises(RefusedDestination, match=why):
        destinations.open_socket((family, socket.SOCK_STREAM, 0, "", address))
    opened = Destinations(allow_private=True).open_socket(
        (family, socket.SOCK_STREAM, 0, "", address)
    )
    opened.close()  # a socket, never connected
    public = destinations.open_socket((socket.AF_INET, socket.SOCK_STREAM, 0, "", ("8.8.8.8", 80)))
    public.close()


async def test_a_webhook_flag_whose_name_resolves_inside_stops_the_start(
    start_runtime: RuntimeFactory,
) -> None:
    names = Names({"internal.test": ["10.0.0.7"], "public.test": ["93.184.216.34"]})
    flags = {"webhook_secret": SECRET, "webhook_resolver": names}
    with pytest.raises(StartupError) as refused:
        await start_runtime(webhook="http://public.test/,http://internal.test/hook", **flags)
    assert str(refused.value).startswith(
        "--webhook: internal.test resolves to 10.0.0.7, a private address; webhooks may not go"
    )
    started = await start_runtime(
        webhook="http://public.test/,http://nowhere.test/", **flags
    )  # nothing sent: no event
    urls = {s.url for s in await started.webhooks.subscriptions()}
    assert urls == {"http://public.test/", "http://nowhere.test/"}
