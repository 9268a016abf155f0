"""Network namespaces for tests that cut a node off the network for real (needs root).

Each node gets its own namespace joined to the root namespace by a veth pair
on a private /30 link subnet; the router listens on a /32 address of a veth
pair kept in the root namespace, reachable from every node through its link,
so cutting one node's link leaves the router and the other nodes reachable.
Addresses in 127.0.0.0/8 do not cross namespaces, hence the private subnet:
it exists only on interfaces this module creates, and every address the
tests talk to belongs to them. :class:`Lab` removes everything it created,
also when the test fails.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field

#: where the lab picks its link subnets (RFC 1918, checked free on the host first)
POOL = ipaddress.ip_network("10.200.0.0/13")


class NetnsUnavailable(Exception):
    """Namespaces cannot be made here; the message says why (for ``pytest.skip``)."""


def ip(*args: str) -> str:
    """Run ``ip ARGS``; its stdout, raising with ip's own message on failure."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def check_available() -> None:
    if os.geteuid() != 0:
        raise NetnsUnavailable("needs root (network namespaces and veth pairs); CI runs as root")
    if not shutil.which("ip"):
        raise NetnsUnavailable("needs ip from iproute2 (.ci/run installs it)")


@dataclass
class NsNode:
    """One namespace: its name, its side of the link, and both link addresses."""

    ns: str
    host_if: str  # the veth end in the root namespace
    ns_if: str  # the veth end inside the namespace
    host_ip: str
    ns_ip: str

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def cut(self) -> None:
        """Take the node's end of the link down: its packets vanish, nothing is reset."""
        ip("-n", self.ns, "link", "set", "dev", self.ns_if, "down")


@dataclass
class Lab:
    """Namespaces with links to the root namespace, and the router's address."""

    tag: str = field(
        default_factory=lambda: f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
    )
    nodes: list[NsNode] = field(default_factory=list)
    router_ip: str = ""
    _router_if: str = ""
    _block: ipaddress.IPv4Network | None = None

    def __enter__(self) -> Lab:
        check_available()
        try:
            self._block = self._free_block()
            hosts = list(self._block.hosts())
            self.router_ip = str(hosts[-1])
            self._router_if = f"srr{self.tag}"  # interface names: at most 15 characters
            ip("link", "add", self._router_if, "type", "veth", "peer", "name", f"srq{self.tag}")
            ip("addr", "add", f"{self.router_ip}/32", "dev", self._router_if)
            ip("link", "set", self._router_if, "up")
            ip("link", "set", f"srq{self.tag}", "up")
        except RuntimeError as exc:
            self.__exit__(None, None, None)
            raise NetnsUnavailable(f"cannot set up veth links here: {exc}") from None
        return self

    def _free_block(self) -> ipaddress.IPv4Network:
        """A /27 of :data:`POOL` that no address on this host falls in."""
        used = [
            ipaddress.ip_interface(word).network
            for line in ip("-4", "-o", "addr", "show").splitlines()
            for word in line.split()
            if "/" in word and word[0].isdigit()
        ]
        blocks = list(POOL.subnets(new_prefix=27))
        random.shuffle(blocks)
        for block in blocks[:50]:
            if not any(block.overlaps(u) for u in used):
                return block
        raise RuntimeError("no free private /27 for the test links")

    def add_node(self) -> NsNode:
        assert self._block is not None
        i = len(self.nodes)
        link = list(self._block.subnets(new_prefix=30))[i]
        host_ip, ns_ip = (str(a) for a in link.hosts())
        node = NsNode(
            f"srns-{self.tag}-{i}", f"srh{self.tag}{i}", f"srn{self.tag}{i}", host_ip, ns_ip
        )
        self.nodes.append(node)  # recorded first: cleanup deletes whatever was made
        ip("netns", "add", node.ns)
        ip("link", "add", node.host_if, "type", "veth", "peer", "name", node.ns_if)
        ip("link", "set", node.ns_if, "netns", node.ns)
        ip("addr", "add", f"{host_ip}/30", "dev", node.host_if)
        ip("link", "set", node.host_if, "up")
        ip("-n", node.ns, "addr", "add", f"{ns_ip}/30", "dev", node.ns_if)
        ip("-n", node.ns, "link", "set", node.ns_if, "up")
        ip("-n", node.ns, "link", "set", "lo", "up")
        ip("-n", node.ns, "route", "add", f"{self.router_ip}/32", "via", host_ip)
        return node

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:  # deleting a namespace deletes its veth end, and so the pair
            subprocess.run(["ip", "netns", "del", node.ns], capture_output=True, check=False)
            subprocess.run(["ip", "link", "del", node.host_if], capture_output=True, check=False)
        if self._router_if:
            subprocess.run(["ip", "link", "del", self._router_if], capture_output=True, check=False)
