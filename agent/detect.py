"""Which engine serves this node, and what a failover may ask of it.

The router resumes a broken chat stream with vLLM's ``continue_final_message``
extension; an engine that ignores it restarts the answer mid-sentence. So the
agent finds out, once the engine answers, what it runs next to and reports
the engine's kind, version and capabilities in every heartbeat:

1. ``engine.kind`` from the configuration wins (no kind probing);
2. otherwise ``GET /v1/models``: the ``owned_by`` of the model cards names
   vLLM (``vllm``), SGLang (``sglang``) and llama.cpp's ``llama-server``
   (``llamacpp``);
3. ``GET /version`` answering ``{"version": "..."}`` is vLLM's (the version
   reported);
4. ``GET /openapi.json`` titled "llama.cpp ..." is llama-cpp-python's server;
5. any other server that lists models is ``openai``; one that does not,
   ``unknown``.

Capabilities follow the kind (only vLLM gets ``continue_final_message`` and
``echo``) unless ``engine.capabilities`` lists them. Everything here is
decided by :func:`classify`, which does no I/O; :class:`EngineDetector`
fetches the documents and logs what it did and did not find.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from spotrelay.core.protocol import CAP_CONTINUE_FINAL_MESSAGE, CAP_ECHO, EngineInfo

from .engine import EngineProbe, EngineUnreachable

log = logging.getLogger("spotrelay.agent.engine")

# owned_by of /v1/models entries -> engine kind
OWNERS = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llama.cpp"}
KIND_CAPABILITIES: dict[str, frozenset[str]] = {
    "vllm": frozenset({CAP_CONTINUE_FINAL_MESSAGE, CAP_ECHO}),
}
MAX_VERSION = 64


@dataclass(frozen=True)
class Probed:
    """The raw answers detection looks at; ``None`` where the engine had no answer."""

    models: Any = None  # decoded /v1/models
    version: Any = None  # decoded /version
    openapi: Any = None  # decoded /openapi.json


def _owners(models: Any) -> set[str]:
    if not isinstance(models, dict) or not isinstance(models.get("data"), list):
        return set()
    return {str(m.get("owned_by")) for m in models["data"] if isinstance(m, dict)}


def _version(doc: Any) -> str | None:
    if isinstance(doc, dict) and isinstance(doc.get("version"), str):
        text = "".join(c for c in doc["version"] if c.isprintable())
        return text[:MAX_VERSION]
    return None


def _openapi_llama(doc: Any) -> str | None:
    """llama-cpp-python's version when ``doc`` is its OpenAPI document."""
    info = doc.get("info") if isinstance(doc, dict) else None
    if isinstance(info, dict) and "llama.cpp" in str(info.get("title", "")):
        return _version(info) or ""
    return None


def classify(probed: Probed) -> tuple[str, str, str]:
    """``(kind, version, evidence)`` from what the engine answered."""
    owners = _owners(probed.models)
    version = _version(probed.version)
    for owner, kind in OWNERS.items():
        if owner in owners:
            return kind, version or "", f"/v1/models owned_by={owner}"
    if version is not None:
        return "vllm", version, "GET /version"
    llama = _openapi_llama(probed.openapi)
    if llama is not None:
        return "llama.cpp", llama, "/openapi.json (llama-cpp-python)"
    if probed.models is not None:
        return "openai", "", "lists models, no vLLM /version"
    return "unknown", "", "no /v1/models, no /version"


def capabilities_for(kind: str, configured: list[str] | None) -> frozenset[str]:
    """Configured capabilities replace the kind's; an unknown kind has none."""
    if configured is not None:
        return frozenset(configured)
    return KIND_CAPABILITIES.get(kind, frozenset())


class EngineDetector:
    """Detects the engine each time it comes up, and logs the findings when they change."""

    def __init__(
        self,
        probe: EngineProbe,
        *,
        kind: str | None = None,
        capabilities: list[str] | None = None,
        log_findings: bool = True,
    ) -> None:
        self.probe = probe
        self.kind = kind
        self.capabilities = capabilities
        self.log_findings = log_findings
        self.info: EngineInfo | None = None
        self._was_healthy = False

    def fallback(self) -> EngineInfo:
        """What to report before the engine ever answered: the configuration, or nothing."""
        kind = self.kind or "unknown"
        return EngineInfo(kind=kind, capabilities=capabilities_for(kind, self.capabilities))

    def current(self) -> EngineInfo:
        return self.info or self.fallback()

    def observe(self, healthy: bool) -> EngineInfo:
        """Called with every engine probe: (re)detect when the engine comes up, and
        again while nothing could be read (a slow engine must not stay ``unknown``)."""
        unread = self.info is not None and self.info.kind == "unknown" and not self.kind
        if healthy and (not self._was_healthy or unread):
            self._detect()
        self._was_healthy = healthy
        return self.current()

    def _get_json(self, path: str) -> Any:
        try:
            status, data = self.probe.get(path)
            return json.loads(data) if status == 200 else None
        except (EngineUnreachable, ValueError):
            return None

    def _detect(self) -> None:
        if self.kind:
            version = _version(self._get_json("/version")) if self.kind == "vllm" else None
            kind, evidence = self.kind, "engine.kind (configured)"
        else:
            probed = Probed(
                models=self._get_json("/v1/models"),
                version=self._get_json("/version"),
                openapi=None,
            )
            if not _owners(probed.models) & set(OWNERS) and _version(probed.version) is None:
                probed = Probed(probed.models, probed.version, self._get_json("/openapi.json"))
            kind, version, evidence = classify(probed)
        info = EngineInfo(
            kind=kind,
            version=version or "",
            capabilities=capabilities_for(kind, self.capabilities),
        )
        if info != self.info and self.log_findings:
            self._log(info, evidence)
        self.info = info

    def _log(self, info: EngineInfo, evidence: str) -> None:
        caps = ", ".join(sorted(info.capabilities)) or "none"
        source = "engine.capabilities" if self.capabilities is not None else f"kind {info.kind}"
        log.info(
            "engine detected: kind=%s version=%s (from %s); capabilities: %s (from %s)",
            info.kind,
            info.version or "?",
            evidence,
            caps,
            source,
        )
        if not info.supports(CAP_CONTINUE_FINAL_MESSAGE):
            log.warning(
                "engine does not advertise continue_final_message: a chat stream that breaks "
                "on this node ends with an error instead of being resumed (completions still "
                "resume); set engine.kind or engine.capabilities if this is wrong"
            )
        load = self.probe.load()
        if load is None:
            log.warning(
                "engine has no readable /metrics: heartbeats report zero load; the routers "
                "balance on their own in-flight count and a drain waits for it to reach 0"
            )
