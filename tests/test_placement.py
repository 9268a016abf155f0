"""Cache-aware and risk-aware placement: prefix keys, bounded consistent hashing, resume
placement and the risk rule, on the router's plain classes (no sockets)."""

from __future__ import annotations

import random
from collections import Counter

from spotrelay.core.protocol import Risk, parse_report
from spotrelay.router.registry.balancer import Balancer, rendezvous_weight
from spotrelay.router.registry.ops import Upsert
from spotrelay.router.registry.outlier import EjectionPolicy
from spotrelay.router.registry.placement import Placement, PrefixIndex, is_long, load_cap
from spotrelay.router.registry.prefix_key import PrefixKey, prefix_key
from spotrelay.router.registry.state import Registry
from spotrelay.router.transport.netpolicy import NetPolicy

NETS = NetPolicy(["10.0.0.0/8"])
SYSTEM = "You are a careful assistant for a travel company. " * 8


def fleet(count: int, risk: dict[str, str] | None = None):
    reg = Registry(15.0, EjectionPolicy(3, 10.0, 300.0), clock=lambda: 1000.0)
    out = []
    for i in range(count):
        url = f"http://10.0.0.{i + 1}:8000"
        doc = {"url": url, "models": ["m"], "risk": (risk or {}).get(f"n{i}", "none")}
        out.append(reg.apply(Upsert(f"n{i}", parse_report(doc), NETS.validate(url))).node)
    return out


def chat(user: str, *history: str, system: str = SYSTEM, **extra) -> dict:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    for i, text in enumerate(history):
        messages.append({"role": "assistant" if i % 2 == 0 else "user", "content": text})
    return {"model": "m", "messages": messages, **extra}


def cache_aware(**kw) -> Balancer:
    return Balancer(random.Random(3), policy="cache_aware", **kw)


# -- prefix keys ---------------------------------------------------------------------------


def test_a_later_turn_extends_the_earlier_turns_chain_and_keeps_its_anchor():
    turn1 = prefix_key(chat("Plan three days in Lisbon."))
    turn2 = prefix_key(
        chat("Plan three days in Lisbon.", "Day 1: Alfama. " * 20, "Make day 2 cheaper.")
    )
    assert turn1 is not None and turn2 is not None
    assert turn2.anchor == turn1.anchor
    assert turn2.chain[: len(turn1.chain)] == turn1.chain
    assert len(turn2.chain) > len(turn1.chain)


def test_conversations_sharing_a_system_prompt_share_blocks_but_not_anchors():
    a = prefix_key(chat("Plan three days in Lisbon."))
    b = prefix_key(chat("Find a hotel in Porto."))
    assert a is not None and b is not None
    assert a.anchor != b.anchor
    shared = len(SYSTEM) // 64
    assert a.chain[:shared] == b.chain[:shared], "the system prompt's whole blocks match"


def test_completions_prompts_and_bodies_without_a_prompt():
    long_prompt = "x" * 5000
    a = prefix_key({"prompt": long_prompt + "first"}, anchor_chars=1024)
    b = prefix_key({"prompt": long_prompt + "second, longer"}, anchor_chars=1024)
    assert a is not None and b is not None and a.anchor == b.anchor
    assert prefix_key({"model": "m", "input": [1, 2]}) is None  # embeddings of token ids
    assert prefix_key({"model": "m"}) is None
    assert prefix_key({"prompt": [1, 2, 3]}) is not None  # a prompt of token ids


# -- consistent hashing with bounded loads -----------------------------------------------


def test_the_same_prefix_goes_to_the_same_node_on_every_worker():
    nodes = fleet(4)
    doc = chat("Plan three days in Lisbon.")
    placement = Placement(key=prefix_key(doc))
    picks = {cache_aware().pick(nodes, placement=placement).id for _ in range(20)}
    assert len(picks) == 1, "two balancers (two workers) agree with no shared state"
    # ... and it is the anchor's rendezvous winner
    key = placement.key
    assert key is not None
    assert picks == {max(nodes, key=lambda n: rendezvous_weight(key.anchor, n.id)).id}


def test_conversations_spread_and_only_the_prefixes_of_a_leaving_node_move():
    nodes = fleet(5)
    bal = cache_aware()
    keys = [Placement(key=prefix_key(chat(f"question {i}"))) for i in range(400)]
    before = [bal.pick(nodes, placement=p).id for p in keys]
    assert all(c > 40 for c in Counter(before).values()), Counter(before)
    after = [bal.pick(nodes[:4], placement=p).id for p in keys]
    moved = [i for i in range(len(keys)) if before[i] != after[i]]
    assert moved and all(before[i] == "n4" for i in moved)


def test_no_node_takes_more_than_the_load_bound():
    nodes = fleet(4)
    bal = cache_aware(load_factor=1.25, load_slack=0)
    hot = Placement(key=prefix_key(chat("the same question")))
    for _ in range(40):  # one hot prefix, requests that stay open
        node = bal.pick(nodes, placement=hot)
        assert node is not None
        assert node.in_flight + 1 <= max(
            load_cap(nodes, 1.25, 0), min(n.in_flight for n in nodes) + 1
        )
        node.in_flight += 1
    loads = [n.in_flight for n in nodes]
    assert max(loads) / (sum(loads) / len(loads)) <= 1.3, loads
    preferred = max(nodes, key=lambda n: rendezvous_weight(hot.key.anchor, n.id))
    assert preferred.in_flight == max(loads), "affinity holds up to the bound"


def test_the_session_header_wins_over_the_prefix():
    nodes = fleet(4)
    placement = Placement(key=prefix_key(chat("Plan three days in Lisbon.")))
    by_session = max(nodes, key=lambda n: rendezvous_weight("s-1", n.id))
    assert cache_aware().pick(nodes, session_key="s-1", placement=placement) is by_session


def test_p2c_ignores_the_prefix():
    nodes = fleet(4)
    placement = Placement(key=prefix_key(chat("Plan three days in Lisbon.")))
    bal = Balancer(random.Random(5), policy="p2c")
    assert len({bal.pick(nodes, placement=placement).id for _ in range(200)}) == 4


# -- resume placement ------------------------------------------------------------------------


def test_a_continuation_goes_to_the_node_holding_the_longest_prefix():
    """A known cache state: n2 served the conversation's earlier turn, n3 only its system
    prompt; the node that broke (n0) is excluded. The continuation goes to n2."""
    nodes = fleet(4)
    index = PrefixIndex()
    bal = cache_aware(index=index)
    other = prefix_key(chat("Something else entirely."))
    earlier = prefix_key(chat("Plan three days in Lisbon.", "Day 1: Alfama. " * 20, "Cheaper?"))
    assert other is not None and earlier is not None
    index.record(other, "n3")
    index.record(earlier, "n2")
    partial = "Day 2: take the tram to Belem instead of a taxi, and " * 3
    continuation = chat("Plan three days in Lisbon.", "Day 1: Alfama. " * 20, "Cheaper?", partial)
    placement = Placement(key=prefix_key(continuation), resume=True)
    assert bal.pick(nodes, exclude={"n0"}, placement=placement).id == "n2"
    # load permitting: a busy n2 gives way to the anchor order
    nodes[2].in_flight = 50
    assert bal.pick(nodes, exclude={"n0"}, placement=placement).id != "n2"


def test_the_prefix_index_is_bounded_and_keeps_several_owners():
    index = PrefixIndex(max_keys=100)
    for i in range(50):
        index.record(PrefixKey(f"a{i}", tuple(f"k{i}-{j}" for j in range(10))), f"n{i % 3}")
    assert len(index) == 100
    assert index.owners("k0-0") == (), "the oldest blocks were evicted"
    assert index.last_home("a49") == "n1" and index.last_home("a0") == "n0"
    index.record(PrefixKey("x", ("shared",)), "a")
    index.record(PrefixKey("y", ("shared",)), "b")
    assert index.owners("shared") == ("b", "a"), "most recent first, both kept"


# -- risk ----------------------------------------------------------------------------------


def test_long_requests_avoid_at_risk_nodes_short_ones_do_not():
    nodes = fleet(3, risk={"n0": "elevated", "n1": "elevated"})
    assert nodes[0].risk is Risk.ELEVATED
    bal = Balancer(random.Random(1), policy="p2c")
    long_ = Placement(long=True)
    assert {bal.pick(nodes, placement=long_).id for _ in range(50)} == {"n2"}
    short = Placement(long=False)
    assert {bal.pick(nodes, placement=short).id for _ in range(100)} == {"n0", "n1", "n2"}
    # every node at risk: long requests still run somewhere
    risky = fleet(2, risk={"n0": "elevated", "n1": "elevated"})
    assert bal.pick(risky, placement=long_) is not None


def test_what_counts_as_long():
    assert is_long({"messages": [], "max_tokens": 4096}, hint=False, threshold=1024)
    assert not is_long({"messages": [], "max_tokens": 100}, hint=False, threshold=1024)
    assert is_long({"messages": []}, hint=False, threshold=1024), "no limit: may run long"
    assert is_long({"prompt": "x", "max_tokens": 5}, hint=True, threshold=1024)
    assert not is_long({"input": ["a"], "model": "m"}, hint=False, threshold=1024)
    assert is_long({"input": "x", "max_output_tokens": 2000}, hint=False, threshold=1024)


def test_a_conversation_that_spilled_under_load_follows_its_history():
    nodes = fleet(4)
    bal = cache_aware(load_factor=1.0, load_slack=0)
    turn1 = chat("Plan three days in Lisbon.")
    home = bal.pick(nodes, placement=Placement(key=prefix_key(turn1)))
    assert home is not None
    home.in_flight = 10  # busy: the turn spills to another node
    spilled = bal.pick(nodes, placement=Placement(key=prefix_key(turn1)))
    assert spilled is not None and spilled is not home
    bal.served(Placement(key=prefix_key(turn1)), spilled)
    home.in_flight = 0
    turn2 = chat("Plan three days in Lisbon.", "Day 1: Alfama. " * 20, "Cheaper?")
    assert bal.pick(nodes, placement=Placement(key=prefix_key(turn2))) is spilled, (
        "this worker remembers where the history is"
    )
    fresh = cache_aware(
        load_factor=1.0, load_slack=0
    )  # another worker, no memory: the anchor decides
    assert fresh.pick(nodes, placement=Placement(key=prefix_key(turn2))) is home
