"""The shared registry's layout in Redis/Valkey, and the few atomic calls on it.

Layout (``P`` = ``registry.redis_key_prefix``):

- ``P:node:<id>``: a hash per node: ``url``, ``report`` (the agent's JSON body,
  opaque to Redis), ``drained`` (``1`` once an operator drained it),
  ``seen_ms`` / ``registered_ms`` (Redis server time), ``rev``. It expires by
  itself a while after ``ttl_s`` so a fleet with no router left does not
  leave garbage behind;
- ``P:nodes``: the set of node ids;
- ``P:gone:<id>``: when a node was deleted (Redis time), kept as long as a
  node hash, so a worker writing back its view after an outage cannot bring
  back a node deleted meanwhile; a fresh heartbeat clears it;
- ``P:rev``: a counter; every change takes the next value;
- ``P:events``: the pub/sub channel every change is published on, as JSON
  (``{"op": "put"|"drain"|"delete"|"expire", "id", "rev", ...}``).

Every write is one Lua script, so the write and its publication are atomic
and messages arrive in ``rev`` order. Times are Redis's own clock (``TIME``),
so TTL expiry does not depend on the routers' clocks agreeing. A drain is
sticky, as in the in-memory registry: a heartbeat never clears it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PUT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seen = now - tonumber(ARGV[5])
local old = redis.call('HMGET', KEYS[3], 'seen_ms', 'registered_ms', 'drained')
if ARGV[6] == 'restore' then
  if old[1] and tonumber(old[1]) >= seen then return 0 end
  local gone = redis.call('GET', KEYS[5])
  if gone and tonumber(gone) >= seen then return 0 end
else
  redis.call('DEL', KEYS[5])
end
local drained = ARGV[4]
if old[3] == '1' then drained = '1' end
local registered = old[2] or string.format('%d', seen)
local rev = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[3], 'url', ARGV[2], 'report', ARGV[3], 'drained', drained,
  'seen_ms', string.format('%d', seen), 'registered_ms', registered, 'rev', rev)
redis.call('PEXPIRE', KEYS[3], ARGV[7])
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[4], cjson.encode({op = 'put', id = ARGV[1], rev = rev,
  url = ARGV[2], report = ARGV[3], drained = drained, age_ms = now - seen}))
return rev
"""

DRAIN = """
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
local rev = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[3], 'drained', '1', 'rev', rev)
redis.call('PUBLISH', KEYS[4], cjson.encode({op = 'drain', id = ARGV[1], rev = rev}))
return rev
"""

REMOVE = """
if ARGV[2] == 'expire' then
  local seen = redis.call('HGET', KEYS[3], 'seen_ms')
  if seen then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    if now - tonumber(seen) <= tonumber(ARGV[3]) then return 0 end
  end
end
local existed = redis.call('DEL', KEYS[3]) + redis.call('SREM', KEYS[1], ARGV[1])
if ARGV[2] == 'delete' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('SET', KEYS[5], string.format('%d', now), 'PX', ARGV[4])
end
if existed == 0 then return 0 end
local rev = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[4], cjson.encode({op = ARGV[2], id = ARGV[1], rev = rev}))
return rev
"""

SNAPSHOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {tonumber(redis.call('GET', KEYS[2]) or '0'), now}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local h = redis.call('HMGET', ARGV[1] .. id, 'url', 'report', 'drained', 'seen_ms')
  if h[1] then
    table.insert(out, {id, h[1], h[2], h[3], h[4]})
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return out
"""


@dataclass(frozen=True)
class SharedNode:
    """One node as the shared view holds it."""

    id: str
    url: str
    report: dict[str, Any]
    drained: bool
    age_s: float


@dataclass(frozen=True)
class Snapshot:
    rev: int
    nodes: list[SharedNode]


class RedisStore:
    """The four atomic operations on the shared view; the client is redis-py's."""

    def __init__(self, client: Any, prefix: str, ttl_s: float) -> None:
        self.client = client
        self.prefix = prefix
        self.channel = f"{prefix}:events"
        self._set, self._rev = f"{prefix}:nodes", f"{prefix}:rev"
        self.ttl_ms = int(ttl_s * 1000)
        # The hash outlives the TTL so late readers still see why a node went.
        self._keep_ms = str(max(60_000, 4 * self.ttl_ms))
        self._put = client.register_script(PUT)
        self._drain = client.register_script(DRAIN)
        self._remove = client.register_script(REMOVE)
        self._snapshot = client.register_script(SNAPSHOT)

    def _keys(self, node_id: str) -> list[str]:
        p = self.prefix
        return [self._set, self._rev, f"{p}:node:{node_id}", self.channel, f"{p}:gone:{node_id}"]

    def put(
        self,
        node_id: str,
        url: str,
        report: dict[str, Any],
        drained: bool,
        age_s: float = 0.0,
        client: Any = None,
    ) -> Any:
        """Write a heartbeat (``age_s`` = 0) or restore an older one if Redis has nothing newer.

        With a pipeline as ``client`` the call is only queued.
        """
        mode = "restore" if age_s > 0 else "put"
        args: list[str | int] = [node_id, url, json.dumps(report), "1" if drained else "0"]
        args += [int(age_s * 1000), mode, self._keep_ms]
        return self._put(self._keys(node_id), args, client=client or self.client)

    def restore(self, nodes: list[tuple[str, str, dict[str, Any], bool, float]]) -> None:
        """Write back many nodes (id, url, report, drained, age_s) in one round trip."""
        if not nodes:
            return
        pipe = self.client.pipeline(transaction=False)
        for node_id, url, report, drained, age_s in nodes:
            self.put(node_id, url, report, drained, max(0.001, age_s), client=pipe)
        pipe.execute()

    def drain(self, node_id: str) -> int:
        return int(self._drain(self._keys(node_id), [node_id]))

    def remove(self, node_id: str, op: str = "delete") -> int:
        """Delete the node; with ``op="expire"`` only if Redis also saw it silent for ttl_s."""
        return int(self._remove(self._keys(node_id), [node_id, op, self.ttl_ms, self._keep_ms]))

    def snapshot(self) -> Snapshot:
        raw = self._snapshot([self._set, self._rev], [f"{self.prefix}:node:"])
        rev, now_ms = int(raw[0]), int(raw[1])
        nodes = []
        for node_id, url, report, drained, seen_ms in raw[2:]:
            nodes.append(
                SharedNode(
                    id=_text(node_id),
                    url=_text(url),
                    report=json.loads(report),
                    drained=_text(drained) == "1",
                    age_s=max(0.0, (now_ms - int(seen_ms)) / 1000),
                )
            )
        return Snapshot(rev, nodes)


def parse_event(data: bytes | str) -> dict[str, Any]:
    """A published change; ``report`` decoded, ``age_s`` and ``drained`` typed."""
    doc = json.loads(data)
    if doc.get("op") == "put":
        doc["report"] = json.loads(doc["report"])
        doc["drained"] = str(doc.get("drained")) == "1"
        doc["age_s"] = max(0.0, float(doc.get("age_ms", 0)) / 1000)
    doc["rev"] = int(doc["rev"])
    return doc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
