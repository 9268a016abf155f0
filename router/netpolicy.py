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
"""

from __future__ import annotations

import ipaddress
import socket
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
    return sorted({info[4][0] for info in infos})


class NetPolicy:
    """Validates node URLs against the allowed networks and the always-refused ranges."""

    def __init__(self, allowed_networks: Iterable[str], resolver: Resolver = system_resolver):
        self.allowed: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in allowed_networks
        )
        self.resolver = resolver

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
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise NodeURLError(f"url is malformed: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise NodeURLError(f"url scheme must be http or https, not {parts.scheme or 'empty'!r}")
        if parts.username is not None or parts.password is not None:
            raise NodeURLError("url must not contain credentials")
        if parts.query or parts.fragment:
            raise NodeURLError("url must not have a query or fragment")
        if parts.path not in ("", "/"):
            raise NodeURLError("url must be a base URL without a path (e.g. http://10.0.1.5:8000)")
        host = parts.hostname
        if not host:
            raise NodeURLError("url has no host")
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
        netloc = f"[{host}]" if ":" in host else host
        normalised = f"{scheme}://{netloc}:{port}"
        return NodeTarget(url=normalised, scheme=scheme, host=host, address=address, port=port)

    def _resolve_and_check(self, host: str, port: int) -> str:
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
