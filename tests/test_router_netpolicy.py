"""Node URL validation: the router must not become an SSRF proxy."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spotrelay.router.settings import PRIVATE_AND_LOOPBACK
from spotrelay.router.transport.netpolicy import NetPolicy, NodeURLError


def policy(networks=None, dns=None) -> NetPolicy:
    table = dns or {}

    def resolver(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(-2, "Name or service not known")
        return table[host]

    return NetPolicy(networks or PRIVATE_AND_LOOPBACK, resolver)


@pytest.mark.parametrize(
    "url, address, normalised",
    [
        ("http://10.0.1.5:8000", "10.0.1.5", "http://10.0.1.5:8000"),
        ("http://192.168.1.20:8000/", "192.168.1.20", "http://192.168.1.20:8000"),
        ("https://172.16.3.4", "172.16.3.4", "https://172.16.3.4:443"),
        ("HTTP://127.0.0.1:9", "127.0.0.1", "http://127.0.0.1:9"),
    ],
)
def test_private_addresses_are_accepted(url, address, normalised):
    target = policy().validate(url)
    assert target.address == address
    assert target.url == normalised
    assert target.host == target.address


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://169.254.169.254", "always refused"),
        ("http://169.254.169.254:80/", "always refused"),
        ("http://169.254.170.2:8000", "always refused"),
        ("http://[fe80::1]:8000", "always refused"),
        ("http://[fd00:ec2::254]", "always refused"),
        ("http://[::ffff:169.254.169.254]:80", "always refused"),
        ("http://0.0.0.0:8000", "always refused"),
        ("http://224.0.0.1:8000", "always refused"),
        ("http://8.8.8.8:8000", "outside registry.allowed_networks"),
        ("http://[::1]:8000", "outside registry.allowed_networks"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://10.0.0.1:70", "scheme"),
        ("ftp://10.0.0.1", "scheme"),
        ("10.0.0.1:8000", "scheme"),
        ("http://user:pw@10.0.0.1:8000", "credentials"),
        ("http://10.0.0.1:8000/v1", "without a path"),
        ("http://10.0.0.1:8000/?x=1", "query"),
        ("http://10.0.0.1:8000/#frag", "query or fragment"),
        ("http://10.0.0.1:99999", "malformed"),
        ("http://:8000", "no host"),
    ],
)
def test_refused_urls_say_why(url, why):
    with pytest.raises(NodeURLError, match=why):
        policy().validate(url)


def test_link_local_is_refused_even_when_everything_is_allowed():
    wide = policy(["0.0.0.0/0", "::/0"])
    assert wide.validate("http://8.8.8.8:80").address == "8.8.8.8"
    for url in ("http://169.254.169.254", "http://[fe80::1]", "http://0.0.0.0", "http://[::]"):
        with pytest.raises(NodeURLError, match="always refused"):
            wide.validate(url)


def test_hostnames_are_resolved_and_pinned():
    p = policy(dns={"node-1.internal": ["10.0.0.7"]})
    target = p.validate("http://node-1.internal:8000")
    assert target.address == "10.0.0.7" and target.host == "node-1.internal"
    assert target.host != target.address


@pytest.mark.parametrize(
    "answers",
    [["169.254.169.254"], ["10.0.0.7", "8.8.8.8"], ["93.184.216.34"], ["fe80::1"]],
)
def test_hostnames_resolving_outside_are_refused(answers):
    p = policy(dns={"evil.example": answers})
    with pytest.raises(NodeURLError, match="resolves to"):
        p.validate("http://evil.example:8000")


def test_unresolvable_hostname_is_refused():
    with pytest.raises(NodeURLError, match="does not resolve"):
        policy().validate("http://nowhere.invalid:8000")


def test_real_resolver_on_localhost():
    target = NetPolicy(PRIVATE_AND_LOOPBACK).validate("http://localhost:8000")
    assert ipaddress.ip_address(target.address).is_loopback


@given(st.integers(min_value=0, max_value=2**16 - 1))
def test_any_link_local_v4_is_refused(n):
    address = ipaddress.IPv4Address(int(ipaddress.IPv4Address("169.254.0.0")) + n)
    with pytest.raises(NodeURLError):
        policy(["0.0.0.0/0"]).validate(f"http://{address}:8000")


@given(st.ip_addresses(v=4))
def test_v4_decision_matches_the_networks(address):
    p = policy()
    allowed = any(address in ipaddress.ip_network(n) for n in PRIVATE_AND_LOOPBACK)
    try:
        p.validate(f"http://{address}:8000")
        accepted = True
    except NodeURLError:
        accepted = False
    assert accepted == allowed
