"""The local vLLM engine as the agent sees it: HTTP probes, its process, its unit.

- :class:`EngineProbe`: health (``engine.health_path``, vLLM's ``/health``;
  when that answers 404, as on llama-cpp-python's server, a ``/v1/models``
  that answers is the health check), ``/v1/models`` and the load gauges on
  ``/metrics`` (``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
  ``vllm:kv_cache_usage_perc``; older vLLM's ``vllm:gpu_cache_usage_perc``) and
  the generated-token counter ``vllm:generation_tokens_total``, whose
  standing still while requests run is how a hung GPU shows (:mod:`.hang`).
- :class:`ProcessWatch`: finds the engine process with psutil and notices at
  once when it is gone (a crash shows up before ``/health`` times out).
- :func:`stop_unit`: ``systemctl stop`` of the engine's systemd unit.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import psutil
import urllib3

from spotrelay.core.protocol import NodeLoad

log = logging.getLogger("spotrelay.agent.engine")

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
GENERATED = "vllm:generation_tokens_total"


def read_metrics(text: str) -> tuple[NodeLoad, float | None]:
    """The load gauges and the generated-token counter, summed over every ``model_name``.

    A missing gauge counts as 0, a missing counter is ``None`` (the engine
    cannot be watched for stalls); a malformed exposition raises ``ValueError``.
    """
    from prometheus_client.parser import text_string_to_metric_families

    running = waiting = 0.0
    generated: float | None = None
    kv: list[float] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == RUNNING:
                running += sample.value
            elif sample.name == WAITING:
                waiting += sample.value
            elif sample.name in KV_USAGE:
                kv.append(sample.value)
            elif sample.name == GENERATED:
                generated = (generated or 0.0) + sample.value
    load = NodeLoad(
        running=int(running), waiting=int(waiting), kv_cache_usage=max(kv) if kv else 0.0
    )
    return load, generated


def parse_metrics(text: str) -> NodeLoad:
    """The load gauges alone (see :func:`read_metrics`)."""
    return read_metrics(text)[0]


@dataclass
class EngineStatus:
    """One probe of the engine."""

    healthy: bool
    models: list[str] = field(default_factory=list)
    load: NodeLoad | None = None
    process_alive: bool | None = None  # None: not watched / not found yet
    error: str | None = None
    generated: float | None = None  # vllm:generation_tokens_total; None: not exported
    stalled: bool = False  # requests running, no token for engine.stall_after_s (.hang)

    def serves(self, model: str | None) -> list[str]:
        """The models to advertise: ``model`` if listed (or all listed if unset)."""
        if model is None:
            return list(self.models)
        return [model] if model in self.models else []

    def ready(self, model: str | None) -> bool:
        return (
            self.healthy
            and not self.stalled
            and self.process_alive is not False
            and bool(self.serves(model))
        )

    @property
    def idle(self) -> bool:
        return self.load is not None and self.load.running + self.load.waiting == 0


class EngineProbe:
    """HTTP probes of the engine; every method returns, never raises on network errors.

    Engines without a health endpoint are common (llama-cpp-python's server,
    many in-house servers): when ``health_path`` answers 404 the probe falls
    back, for good and with one log line, to ``/v1/models`` answering 200.
    """

    def __init__(self, url: str, *, timeout_s: float = 2.0, health_path: str = "/health") -> None:
        self.base = url.rstrip("/")
        self.health_path = health_path
        self.health_fallback = False  # health_path answered 404: /v1/models decides
        self._http = urllib3.PoolManager(num_pools=1, maxsize=4, retries=False)
        self._timeout = urllib3.Timeout(connect=min(timeout_s, 1.0), read=timeout_s)

    @property
    def port(self) -> int:
        parts = urlsplit(self.base)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def get(self, path: str) -> tuple[int, bytes]:
        """``GET path``: (status, body); raises :class:`EngineUnreachable` on network errors."""
        try:
            resp = self._http.request("GET", self.base + path, timeout=self._timeout)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise EngineUnreachable(f"GET {path}: {exc}") from None
        return resp.status, resp.data

    def _health_status(self) -> int:
        """The health path's status; once it answered 404, ``/v1/models``'s instead."""
        if not self.health_fallback:
            status = self.get(self.health_path)[0]
            if status != 404:
                return status
            self.health_fallback = True
            log.warning(
                "engine answers 404 on %s: using GET /v1/models answering 200 as its health "
                "check (set engine.health_path if the engine has another one)",
                self.health_path,
            )
        return self.get("/v1/models")[0]

    def models(self) -> list[str]:
        try:
            return _model_ids(*self.get("/v1/models"))
        except EngineUnreachable:
            return []

    def metrics(self) -> tuple[NodeLoad, float | None] | None:
        """Load and generated tokens (:func:`read_metrics`); ``None`` if ``/metrics`` fails."""
        try:
            status, data = self.get("/metrics")
            if status != 200:
                return None
            return read_metrics(data.decode("utf-8", "replace"))
        except (EngineUnreachable, ValueError) as exc:
            log.debug("engine metrics unavailable: %s", exc)
            return None

    def load(self) -> NodeLoad | None:
        """Current load, or ``None`` if ``/metrics`` is unreachable or unreadable."""
        read = self.metrics()
        return None if read is None else read[0]

    def canary(self, model: str) -> bool:
        """Ask for one token (``POST /v1/completions``); True if the engine answered in time.

        Any answer counts: a refusal (a chat-only server, say) shows the
        generation path is not wedged, and must not keep a working node out.
        """
        body = json.dumps({"model": model, "prompt": "ping", "max_tokens": 1}).encode()
        try:
            resp = self._http.request(
                "POST",
                self.base + "/v1/completions",
                body=body,
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            log.debug("canary request unanswered: %s", exc)
            return False
        if resp.status != 200:
            log.info("canary request answered %s: taken as a working engine", resp.status)
        return True

    def probe(self) -> EngineStatus:
        try:
            if self.health_fallback:
                # One GET answers both questions: on some engines (llama-cpp-python)
                # /v1/models waits for the request being generated.
                status, data = self.get("/v1/models")
                models = _model_ids(status, data)
            else:
                status, models = self._health_status(), None
        except EngineUnreachable as exc:
            return EngineStatus(healthy=False, error=str(exc))
        if status != 200:
            path = "/v1/models" if self.health_fallback else self.health_path
            return EngineStatus(healthy=False, error=f"{path} answered {status}")
        if models is None:
            models = self.models()
        read = self.metrics()
        load, generated = read if read is not None else (None, None)
        return EngineStatus(healthy=True, models=models, load=load, generated=generated)


class EngineUnreachable(Exception):
    pass


def _model_ids(status: int, data: bytes) -> list[str]:
    """The ids an OpenAI ``/v1/models`` answer lists; none unless it is a 200 with JSON."""
    if status != 200:
        return []
    try:
        doc = json.loads(data)
        return [str(m["id"]) for m in doc.get("data", []) if isinstance(m, dict) and "id" in m]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []


def _matches(proc_name: str, cmdline: list[str], wanted: str) -> bool:
    """``vllm`` matches a process named vllm, ``vllm serve``, ``python -m vllm.entrypoints...``.

    A cmdline token matches when it is the name, its basename is the name, or it
    is a dotted module path under the name.
    """
    if proc_name == wanted:
        return True
    for token in cmdline[:6]:  # the program and its first arguments, not user flags
        base = os.path.basename(token)
        if base == wanted or base.startswith(wanted + "."):
            return True
    return False


class ProcessWatch:
    """Finds the engine process by name and tells when it is gone.

    When several processes match (several engines on one host, as in tests),
    the one listening on the engine's port wins. Until a process has been
    found once, the watch has no opinion (``alive()`` is ``None``) so a
    misnamed ``process_name`` cannot keep a healthy node out of service.
    """

    def __init__(self, name: str | None, port: int, *, rescan_s: float = 1.0) -> None:
        self.name = name or None
        self.port = port
        self.rescan_s = rescan_s
        self.proc: psutil.Process | None = None
        self.found_once = False
        self._last_scan = -1e9
        self._lost_at: float | None = None
        self._me = os.getpid()

    def _scan(self) -> psutil.Process | None:
        candidates = []
        for proc in psutil.process_iter(["pid", "name", "cmdline"]):
            info = proc.info
            if info["pid"] == self._me:
                continue
            if _matches(info.get("name") or "", info.get("cmdline") or [], self.name or ""):
                candidates.append(proc)
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        listening = [p for p in candidates if self._listens(p)]
        if listening:
            return listening[0]
        # Several engines and none provably ours: the oldest is the best guess.
        return min(candidates, key=lambda p: _create_time(p))

    def _listens(self, proc: psutil.Process) -> bool:
        try:
            # psutil >= 6 names it net_connections; 5.x only has connections.
            conns = getattr(proc, "net_connections", None) or proc.connections
            for conn in conns(kind="inet"):
                if (
                    conn.status == psutil.CONN_LISTEN
                    and conn.laddr
                    and conn.laddr.port == self.port
                ):
                    return True
        except (psutil.Error, OSError):
            return False
        return False

    def alive(self) -> bool | None:
        """True/False once the process was found; ``None`` while disabled or never found."""
        if not self.name:
            return None
        if self.proc is not None:
            try:
                if self.proc.is_running() and self.proc.status() != psutil.STATUS_ZOMBIE:
                    return True
            except psutil.Error:
                pass
            log.warning("engine process %s (pid %s) is gone", self.name, self.proc.pid)
            self.proc = None
            self._lost_at = time.monotonic()
            self._last_scan = -1e9
        now = time.monotonic()
        # A scan reads every process's cmdline: often right after a loss (a
        # restart is expected), rarely otherwise.
        recently_lost = self._lost_at is not None and now - self._lost_at < 30
        if now - self._last_scan >= (self.rescan_s if recently_lost else 5 * self.rescan_s):
            self._last_scan = now
            self.proc = self._scan()
            if self.proc is not None:
                if self.found_once:
                    log.info("engine process is back", extra={"pid": self.proc.pid})
                self.found_once = True
                self._lost_at = None
                return True
        return False if self.found_once else None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


def _create_time(proc: psutil.Process) -> float:
    try:
        return proc.create_time()
    except psutil.Error:
        return float("inf")


def stop_unit(unit: str, timeout_s: float) -> bool:
    """``systemctl stop unit``; True on success. Needs the rights the unit file grants."""
    try:
        result = subprocess.run(
            ["systemctl", "stop", unit],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("systemctl stop %s failed: %s", unit, exc)
        return False
    if result.returncode != 0:
        log.error("systemctl stop %s exited %s: %s", unit, result.returncode, result.stderr.strip())
        return False
    log.info("stopped %s", unit)
    return True
