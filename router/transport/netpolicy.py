"""Which node URLs the router agrees to send traffic to (no SSRF through the router).

Anyone holding the node token can register a URL, and the router will then
POST client prompts to it and GET ``/health`` from it. Without a check, that is
a server-side request forgery primitive: register ``http://169.254.169.254``
and the router fetches instance credentials. So a node URL must be:

- ``http`` or ``https``, with no credentials, query or fragment, and an empty
  path (it is a base URL: the router appends ``/v1/...`` and ``/health``);
- a host that is an IP address, or a name that resolves, *every* address of
  it, inside ``registry.allowed_networks``;
- never link-local (``169.254.0.0/16``, ``fe80::/10`` — cloud metadata lives
  there), the AWS IPv6 metadata address, unspecified (``0.0.0.0``, ``::``),
  multicast or broadcast, whatever the configuration says.

A hostname is resolved once, at registration, and the router connects to the
resolved address (sending the name as ``Host``/SNI), so a DNS answer that
changes later (rebinding) cannot redirect traffic outside the allowed networks.

The URL is NFKC-normalised and a non-ASCII host name IDNA-encoded first (so
fullwidth digits in ``http://127.0.0.1`` become ASCII ones and the connection code only
ever sees ASCII); whitespace, control characters, a non-ASCII port and port 0
are refused. A URL that resolves to one of the router's own listeners
(:class:`OwnEndpoints`) is refused too: the router would send requests to
itself, each of which it would forward to itself again.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALWAYS_REFUSED: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),  # IPv4 link-local: EC2/ECS/GCP/Azure metadata
    ipaddress.ip_network("fe80::/10"),  # IPv6 link-local
    ipaddress.ip_network("fd00:ec2::254/128"),  # EC2 IMDS over IPv6
    ipaddress.ip_network("0.0.0.0/8"),  # "this network", 0.0.0.0 reaches local listeners
    ipaddress.ip_network("::/128"),  # unspecified
    ipaddress.ip_network("224.0.0.0/4"),  # IPv4 multicast
    ipaddress.ip_network("ff00::/8"),  # IPv6 multicast
    ipaddress.ip_network("255.255.255.255/32"),  # broadcast
)

Resolver = Callable[[str, int], list[str]]
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
PORT_RE = re.compile(r"[0-9]{1,5}")


def address_is_local(address: str) -> bool:
    """Is ``address`` one of this machine's own? (Only a local address can be bound.)"""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


class OwnEndpoints:
    """The router's own listen addresses and ports, which no node URL may point at."""

    def __init__(
        self,
        host: str,
        ports: Iterable[int],
        *,
        is_local: Callable[[str], bool] = address_is_local,
        resolver: Resolver | None = None,
    ) -> None:
        self.ports = frozenset(p for p in ports if p)
        self.is_local = is_local
        self.wildcard = host in WILDCARD_HOSTS
        self.addresses: frozenset[str] = frozenset()
        if not self.wildcard:
            try:
                self.addresses = frozenset({str(ipaddress.ip_address(host))})
            except ValueError:
                try:
                    self.addresses = frozenset((resolver or system_resolver)(host, 0))
                except (OSError, UnicodeError):
                    self.wildcard = True  # cannot tell: treat every local address as ours

    def contains(self, address: IPAddress, port: int) -> bool:
        if port not in self.ports:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not self.wildcard:
            return str(address) in self.addresses
        return self.is_local(str(address))


class NodeURLError(ValueError):
    """A node URL the router refuses; the message says why (safe to return to the agent)."""


@dataclass(frozen=True)
class NodeTarget:
    """Where to connect for a node: the vetted address plus the name to present."""

    url: str  # normalised base URL as registered, e.g. "http://10.0.1.5:8000"
    scheme: str
    host: str  # as written in the URL (a name or an IP literal)
    address: str  # the IP address the router connects to
    port: int


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class NetPolicy:
    """Validates node URLs against the allowed networks and the always-refused ranges."""

    def __init__(
        self,
        allowed_networks: Iterable[str],
        resolver: Resolver = system_resolver,
        own: OwnEndpoints | None = None,
    ):
        self.allowed: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in allowed_networks
        )
        self.resolver = resolver
        self.own = own

    def check_address(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused, or ``None`` when it is acceptable."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        for net in ALWAYS_REFUSED:
            if address.version == net.version and address in net:
                return f"{address} is in {net}, which is always refused"
        for net in self.allowed:
            if address.version == net.version and address in net:
                return None
        return f"{address} is outside registry.allowed_networks"

    def validate(self, url: str) -> NodeTarget:
        """The :class:`NodeTarget` for ``url``, or :class:`NodeURLError` saying why not."""
        if len(url) > 2048:
            raise NodeURLError("url is too long")
        url = unicodedata.normalize("NFKC", url)
        if any(c.isspace() or unicodedata.category(c)[0] == "C" for c in url):
            raise NodeURLError("url must not contain whitespace or control characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise NodeURLError(f"url is malformed: {exc}") from None
        if not (parts.scheme + parts.path + _port_text(parts.netloc)).isascii():
            raise NodeURLError("url must be ASCII apart from the host name")
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise NodeURLError(f"url scheme must be http or https, not {parts.scheme or 'empty'!r}")
        if parts.username is not None or parts.password is not None:
            raise NodeURLError("url must not contain credentials")
        if parts.query or parts.fragment:
            raise NodeURLError("url must not have a query or fragment")
        if parts.path not in ("", "/"):
            raise NodeURLError("url must be a base URL without a path (e.g. http://10.0.1.5:8000)")
        host = _ascii_host(parts.hostname)
        raw_port = _port_text(parts.netloc)
        if raw_port and not PORT_RE.fullmatch(raw_port):
            raise NodeURLError("url port must be a number")
        if port == 0:
            raise NodeURLError("url port must be 1-65535, not 0")
        port = port or (443 if scheme == "https" else 80)
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            reason = self.check_address(literal)
            if reason:
                raise NodeURLError(f"url refused: {reason}")
            address = str(literal)
        else:
            address = self._resolve_and_check(host, port)
        if self.own is not None and self.own.contains(ipaddress.ip_address(address), port):
            raise NodeURLError(
                f"url refused: {address}:{port} is this router's own listener (a request loop)"
            )
        netloc = f"[{host}]" if ":" in host else host
        normalised = f"{scheme}://{netloc}:{port}"
        return NodeTarget(url=normalised, scheme=scheme, host=host, address=address, port=port)

    def _resolve_and_check(self, host: str, port: int) -> str:
        """The address to connect to; every address ``host`` resolves to must pass."""
        try:
            addresses = self.resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise NodeURLError(f"url host {host!r} does not resolve: {exc}") from None
        if not addresses:
            raise NodeURLError(f"url host {host!r} does not resolve")
        parsed: list[IPAddress] = []
        for text in addresses:
            try:
                parsed.append(ipaddress.ip_address(text.split("%", 1)[0]))
            except ValueError:
                raise NodeURLError(f"url host {host!r} resolved to {text!r}") from None
        for address in parsed:
            reason = self.check_address(address)
            if reason:
                raise NodeURLError(f"url refused: {host} resolves to {reason}")
        # Prefer IPv4 when both families are present: that is what agents advertise.
        parsed.sort(key=lambda a: a.version)
        return str(parsed[0])


def _port_text(netloc: str) -> str:
    """The port as written in ``netloc`` ('' when none)."""
    hostport = netloc.rpartition("@")[2]
    tail = hostport.rpartition("]")[2] if hostport.startswith("[") else hostport
    return tail.rpartition(":")[2] if ":" in tail else ""


def _ascii_host(host: str | None) -> str:
    """The host as ASCII: IDNA for a non-ASCII name; NodeURLError when there is none."""
    if not host:
        raise NodeURLError("url has no host")
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise NodeURLError("url host is not a valid internationalised domain name") from None
