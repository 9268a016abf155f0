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
from dataclasses import dataclass, field
from typing import Any

from spotrelay.core.protocol import valid_node_id

# Redis is inside the trust boundary, but its content is still checked like
# HTTP input (see RedisSync): a key of the wrong type or a field that is not a
# number must make one entry unreadable, never a script fail for every worker.
# A revision counter that is not a number restarts from the clock in
# milliseconds, above any count, so messages stay ordered.
NEXT_REV = """
local function next_rev()
  local rev = redis.pcall('INCR', KEYS[2])
  if type(rev) == 'number' then return rev end
  local t = redis.call('TIME')
  rev = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('SET', KEYS[2], string.format('%d', rev))
  return rev
end
local function reset_unless(key, kind)
  local found = redis.call('TYPE', key).ok
  if found ~= kind and found ~= 'none' then redis.call('DEL', key) end
end
"""

PUT = (
    NEXT_REV
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seen = now - tonumber(ARGV[5])
reset_unless(KEYS[1], 'set')
reset_unless(KEYS[3], 'hash')
local old = redis.call('HMGET', KEYS[3], 'seen_ms', 'registered_ms', 'drained')
if ARGV[6] == 'restore' then
  local old_seen = tonumber(old[1])
  if old_seen and old_seen >= seen then return 0 end
  local gone = redis.pcall('GET', KEYS[5])
  if type(gone) == 'string' and tonumber(gone) and tonumber(gone) >= seen then return 0 end
else
  redis.call('DEL', KEYS[5])
end
local drained = ARGV[4]
if old[3] == '1' then drained = '1' end
local registered = seen
if tonumber(old[2]) then registered = tonumber(old[2]) end
local rev = next_rev()
redis.call('HSET', KEYS[3], 'url', ARGV[2], 'report', ARGV[3], 'drained', drained,
  'seen_ms', string.format('%d', seen), 'registered_ms', string.format('%d', registered),
  'rev', rev)
redis.call('PEXPIRE', KEYS[3], ARGV[7])
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[4], cjson.encode({op = 'put', id = ARGV[1], rev = rev,
  url = ARGV[2], report = ARGV[3], drained = drained, age_ms = now - seen}))
return rev
"""
)

DRAIN = (
    NEXT_REV
    + """
if redis.call('TYPE', KEYS[3]).ok ~= 'hash' then return 0 end
local rev = next_rev()
redis.call('HSET', KEYS[3], 'drained', '1', 'rev', rev)
redis.call('PUBLISH', KEYS[4], cjson.encode({op = 'drain', id = ARGV[1], rev = rev}))
return rev
"""
)

REMOVE = (
    NEXT_REV
    + """
if ARGV[2] == 'expire' then
  local seen = tonumber(redis.pcall('HGET', KEYS[3], 'seen_ms'))
  if seen then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    if now - seen <= tonumber(ARGV[3]) then return 0 end
  end
end
reset_unless(KEYS[1], 'set')
local existed = redis.call('DEL', KEYS[3]) + redis.call('SREM', KEYS[1], ARGV[1])
if ARGV[2] == 'delete' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('SET', KEYS[5], string.format('%d', now), 'PX', ARGV[4])
end
if existed == 0 then return 0 end
local rev = next_rev()
redis.call('PUBLISH', KEYS[4], cjson.encode({op = ARGV[2], id = ARGV[1], rev = rev}))
return rev
"""
)

# Every member is returned, malformed ones too (a key of another type comes
# back with no fields), so the reader can skip and report each one.
SNAPSHOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rev = redis.pcall('GET', KEYS[2])
if type(rev) ~= 'string' or not tonumber(rev) then rev = '0' end
local out = {tonumber(rev), now}
if redis.call('TYPE', KEYS[1]).ok ~= 'set' then return out end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. id
  local kind = redis.call('TYPE', key).ok
  if kind == 'hash' then
    local h = redis.call('HMGET', key, 'url', 'report', 'drained', 'seen_ms')
    table.insert(out, {id, h[1], h[2], h[3], h[4]})
  elseif kind == 'none' then
    redis.call('SREM', KEYS[1], id)
  else
    table.insert(out, {id})
  end
end
return out
"""


class BadEntry(ValueError):
    """One entry of the shared view or one message that is not what a router writes.

    ``key`` names it for the log (the node id, clipped and escaped, when there is one).
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


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
    bad: list[BadEntry] = field(default_factory=list)


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
        """Every readable node; what cannot be read is in ``Snapshot.bad``, never an exception."""
        raw = self._snapshot([self._set, self._rev], [f"{self.prefix}:node:"])
        rev, now_ms = int(raw[0]), int(raw[1])
        nodes, bad = [], []
        for row in raw[2:]:
            try:
                nodes.append(_shared_node(row, now_ms))
            except BadEntry as exc:
                bad.append(exc)
        return Snapshot(rev, nodes, bad)


def _shared_node(row: Any, now_ms: int) -> SharedNode:
    """One snapshot row (id, url, report, drained, seen_ms), checked field by field."""
    node_id = _node_id(row[0] if isinstance(row, list) and row else None)
    if len(row) != 5 or not all(isinstance(v, bytes | str) for v in row[1:]):
        raise BadEntry(node_id, "not a node hash with url, report, drained and seen_ms")
    try:
        seen_ms = int(row[4])
    except ValueError:
        raise BadEntry(node_id, "seen_ms is not a number") from None
    return SharedNode(
        id=node_id,
        url=_text(row[1], node_id, "url"),
        report=_report(row[2], node_id),
        drained=_text(row[3], node_id, "drained") == "1",
        age_s=max(0.0, (now_ms - seen_ms) / 1000),
    )


def parse_event(data: bytes | str) -> dict[str, Any]:
    """A published change, every field checked (``report`` decoded, ``age_s`` and ``drained``
    typed); :class:`BadEntry` for anything a router does not publish."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise BadEntry("<message>", "not JSON") from None
    if not isinstance(doc, dict):
        raise BadEntry("<message>", "not a JSON object")
    node_id = _node_id(doc.get("id"))
    op, rev = doc.get("op"), doc.get("rev")
    if op not in OPS:
        raise BadEntry(node_id, f"unknown op {_clip(repr(op))}")
    if isinstance(rev, bool) or not isinstance(rev, int) or rev < 0:
        raise BadEntry(node_id, "'rev' is not a revision number")
    if op == "put":
        age_ms = doc.get("age_ms", 0)
        if isinstance(age_ms, bool) or not isinstance(age_ms, int | float) or age_ms != age_ms:
            raise BadEntry(node_id, "'age_ms' is not a number")
        doc["url"] = _text(doc.get("url"), node_id, "url")
        doc["report"] = _report(doc.get("report"), node_id)
        doc["drained"] = str(doc.get("drained")) == "1"
        doc["age_s"] = max(0.0, float(age_ms) / 1000)
    return doc


OPS = ("put", "drain", "delete", "expire")


def _node_id(value: Any) -> str:
    """A node id as registrations allow them; else BadEntry naming a clipped, escaped copy."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if not isinstance(text, str) or not valid_node_id(text):
        raise BadEntry(_clip(repr(text)), "not a valid node id")
    return text


def _report(value: Any, node_id: str) -> dict[str, Any]:
    try:
        doc = json.loads(value) if isinstance(value, bytes | str) else None
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise BadEntry(node_id, "report is not a JSON object")
    return doc


def _text(value: Any, node_id: str = "", name: str = "") -> str:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise BadEntry(node_id, f"{name} is not UTF-8") from None
    if not isinstance(value, str):
        raise BadEntry(node_id, f"{name} is not a string")
    return value


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
