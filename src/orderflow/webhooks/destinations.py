"""Where webhooks may be sent. By default never to an address of this machine or its networks
(loopback, private, link-local, shared, multicast, unspecified or reserved; IPv4 inside IPv6
judged as the IPv4 it carries), so that a subscription cannot make the service call its own
database, a cloud's metadata service or its own API (SSRF). `--webhook-allow-private` lifts it.

The rule is checked twice: when subscribing (a literal address, or a name that resolves to a
forbidden one, is refused; a name that does not resolve yet is accepted), and on every
connection, against the addresses actually dialled: the HTTP client resolves names through
`Destinations` (a name with any forbidden answer is refused) and opens every socket through
`Destinations.open_socket` (what aiohttp dials without resolving, an IP literal, is checked
there). A refusal there is an OSError, so the attempt fails as a connection failure would.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from orderflow.webhooks.model import url_host

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: IPv4 behind it (RFC 6052)
_KINDS = (  # the first that applies names the refusal
    ("is_unspecified", "unspecified"),
    ("is_loopback", "loopback"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
    ("is_site_local", "site-local"),
    ("is_reserved", "reserved"),
    ("is_private", "private"),
)
POLICY = (
    "webhooks may not go to loopback, private, link-local, shared, multicast, reserved or"
    " unspecified addresses (--webhook-allow-private lifts this)"
)


def forbidden_kind(address: IPAddress) -> str | None:
    """What kind of address `address` is, if a webhook may not go there ("loopback",
    "private", …); None for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        carried = address.ipv4_mapped
        if carried is None and address in _NAT64:
            carried = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if carried is not None:  # the IPv4 address is what is reached
            return forbidden_kind(carried)
        if address.sixtofour is not None and forbidden_kind(address.sixtofour) is not None:
            return f"6to4 ({address.sixtofour})"
    for test, kind in _KINDS:
        if getattr(address, test, False):
            return kind
    if address in _SHARED:
        return "shared"
    if not address.is_global:  # none left on 3.11; later versions list more ranges apart
        return "special-purpose"
    return None


class RefusedDestination(OSError):
    """A connection to a forbidden address was refused before it was made."""


class Destinations(AbstractResolver):
    """The rule, applied: `check` at subscription; as the HTTP client's resolver and socket
    factory, at every connection.

    Args:
        allow_private: allow every address (the rule is off).
        resolver: resolves names (default: the system's, in a thread); tests give their own.
        timeout_s: the longest a subscription waits for its name to resolve.
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        resolver: AbstractResolver | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.allow_private = allow_private
        self._resolver = resolver
        self._owns_resolver = resolver is None
        self._timeout_s = timeout_s

    def refusal(self, address: str) -> str | None:
        """Why a webhook may not go to the IP `address` ("a private address"), or None when it
        may (or when `address` is not an IP address at all)."""
        if self.allow_private:
            return None
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        kind = forbidden_kind(ip)
        return None if kind is None else f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} address"

    def check_literal(self, url: str) -> None:
        """ValueError "url: …" when the host of `url` (a URL `check_url` accepts) is a
        forbidden IP address."""
        host = url_host(url)
        why = self.refusal(host)
        if why is not None:
            raise ValueError(f"url: {host} is {why}; {POLICY}")

    async def check(self, url: str) -> None:
        """`check_literal`, then, for a name, ValueError "url: …" when it resolves to any
        forbidden address. A name that does not resolve (or not within the timeout) passes:
        it is checked again at every connection."""
        self.check_literal(url)
        host = url_host(url)
        if self.allow_private or _is_ip(host):
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                found = await self._resolver_now().resolve(host, 0, socket.AF_UNSPEC)
        except (OSError, TimeoutError):
            return
        for result in found:
            why = self.refusal(result["host"])
            if why is not None:
                raise ValueError(f"url: {host} resolves to {result['host']}, {why}; {POLICY}")

    # -- as the HTTP client's resolver and socket factory ------------------------------------

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        """The addresses of `host`; RefusedDestination when any of them is forbidden (not
        only the ones dialled first: happy eyeballs may dial any)."""
        try:
            found = await self._resolver_now().resolve(host, port, family)
        except UnicodeError as exc:  # a name no resolver takes (one stored before the rules)
            raise OSError(f"{host} is not a valid host name ({exc})") from None
        for result in found:
            why = self.refusal(result["host"])
            if why is not None:
                raise RefusedDestination(
                    f"destination refused: {host} resolves to {result['host']}, {why}"
                )
        return found

    async def close(self) -> None:
        """Release the system's resolver, if it made one (a resolver given stays the giver's)."""
        if self._owns_resolver and self._resolver is not None:
            resolver, self._resolver = self._resolver, None
            await resolver.close()

    def open_socket(
        self, addr_info: tuple[int, int, int, str, tuple[object, ...]]
    ) -> socket.socket:
        """A socket to connect to `addr_info`'s address; RefusedDestination when that address
        is forbidden (the last check, on what is actually dialled)."""
        family, kind, proto, _, address = addr_info
        why = self.refusal(str(address[0]))
        if why is not None:
            raise RefusedDestination(f"destination refused: {address[0]} is {why}")
        return socket.socket(family, kind, proto)

    def _resolver_now(self) -> AbstractResolver:
        if self._resolver is None:  # it needs the running loop
            self._resolver = ThreadedResolver()
        return self._resolver


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
