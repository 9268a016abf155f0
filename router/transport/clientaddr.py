"""Who the client is when the router sits behind a load balancer.

Behind a load balancer every connection comes from one of its few
addresses, so a cap per peer address would cap the balancer (everyone at
once) or, exempted, nobody. The balancer names the real client in
``X-Forwarded-For`` (it appends the address it received the connection
from). That header is believed only when the peer is in
``server.trusted_proxies``; then the client is the right-most address in it
that is *not* a trusted proxy: everything left of that was written by the
client or by proxies we do not control, so a client cannot choose the
address it is counted as (the standard walk, as nginx's ``real_ip_recursive``
and Envoy's ``xff_num_trusted_hops`` do). A direct client's header is ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Networks:
    """A set of CIDRs that answers ``address in networks`` for address strings."""

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self.nets = tuple(ipaddress.ip_network(n, strict=False) for n in cidrs)

    def __bool__(self) -> bool:
        return bool(self.nets)

    def __contains__(self, address: object) -> bool:
        ip = address if isinstance(address, Address) else parse_ip(str(address))
        if ip is None:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.nets)


def parse_ip(text: str) -> Address | None:
    """An address as peers and proxies write it: ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``,
    ``::1``, ``fe80::1%eth0``; None for anything else."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


MAX_FORWARDED_HOPS = 32  # a longer header is a client's invention: only its tail matters


def real_client(peer: str, forwarded_for: Iterable[str], trusted: Networks) -> str:
    """The address to count a request against.

    ``peer`` itself unless it is a trusted proxy; then the right-most
    address of ``X-Forwarded-For`` (all its values, in order) that is not a
    trusted proxy. Walking stops at something that is not an address: the
    client is then the last address walked (whoever wrote the junk). With
    only trusted addresses, the left-most of them.
    """
    if not trusted or peer not in trusted:
        return peer
    hops = [h for value in forwarded_for for h in value.split(",")]
    client = peer
    for hop in reversed(hops[-MAX_FORWARDED_HOPS:]):
        ip = parse_ip(hop)
        if ip is None:
            return client
        client = str(ip)
        if ip not in trusted:
            return client
    return client
