"""Configuration schema of ``spotrelay sim vllm`` (YAML sections ``sim`` and ``faults``).

The one declaration of what the simulator is started with: the loader reads
it (flags, YAML, ``SPOTRELAY_SIM_*`` / ``SPOTRELAY_FAULTS_*``) and the server
runs on the ``sim`` section as loaded. Imports stay light: the CLI module
imports this one at start, the engine and the protocol load when the server
asks for their settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from spotrelay.core.config import setting

from .prefix_cache import (
    DEFAULT_BLOCK_TOKENS,
    DEFAULT_CAPACITY_BLOCKS,
    DEFAULT_PREFILL_TOKENS_PER_S,
    CacheSettings,
)

if TYPE_CHECKING:
    from .engine import EngineSettings
    from .vllm_protocol import Limits


@dataclass
class SimSettings:
    """Everything ``spotrelay sim vllm`` is started with (besides faults)."""

    host: str = setting("127.0.0.1", help="address to bind")
    port: int = setting(8000, min=1, max=65535, help="port to bind (vLLM's default)")
    model: str = setting("sim-model", help="served model name (the body's 'model')")
    ttft_ms: float = setting(50.0, min=0, help="time to first token, from getting a slot")
    itl_ms: float = setting(10.0, min=0, help="inter-token latency")
    max_num_seqs: int = setting(256, min=1, help="running requests at most; the rest wait")
    max_model_len: int = setting(4096, min=2, help="prompt + completion tokens at most")
    default_max_tokens: int = setting(
        128, min=1, help="chat max_tokens when the request has none (completions: 16)"
    )
    kv_cache_tokens: int = setting(
        65536, min=1, help="tokens the simulated KV cache holds (vllm:kv_cache_usage_perc)"
    )
    embedding_dim: int = setting(256, min=1, max=8192, help="length of embedding vectors")
    block_size: int = setting(
        DEFAULT_BLOCK_TOKENS, min=1, max=1024, help="tokens per prefix-cache block (vLLM's 16)"
    )
    prefix_cache_blocks: int = setting(
        DEFAULT_CAPACITY_BLOCKS,
        min=0,
        help="blocks the prefix cache holds, LRU (0: no prefix caching; default ~ a 24 GiB "
        "GPU serving an 8B model)",
    )
    prefill_tokens_per_s: float = setting(
        DEFAULT_PREFILL_TOKENS_PER_S,
        min=0,
        help="uncached prompt tokens prefilled per second, added to the time to first token "
        "(0: prefill takes no time)",
    )
    shutdown_timeout_s: float = setting(
        0.0, min=0, help="on SIGTERM, let in-flight requests run this long (vLLM: 0)"
    )
    decode_pause_ms: float = setting(
        0.0,
        min=0,
        help="hold every running stream's decode this long (a long prefill of another "
        "request) once per decode_pause_every_s; 0 = never",
    )
    decode_pause_every_s: float = setting(
        0.0, min=0, help="how often decode pauses come (0 = never)"
    )
    api: str = setting(
        "vllm",
        choices=("vllm", "openai"),
        help="vllm: vLLM's endpoints; openai: the OpenAI API and /v1/models only "
        "(no /health, /version or /metrics, as llama-cpp-python's server)",
    )

    def engine(self) -> EngineSettings:
        from .engine import EngineSettings

        return EngineSettings(
            model=self.model,
            ttft_ms=self.ttft_ms,
            itl_ms=self.itl_ms,
            max_num_seqs=self.max_num_seqs,
            max_model_len=self.max_model_len,
            kv_cache_tokens=self.kv_cache_tokens,
            prefix_cache=CacheSettings(
                block_tokens=self.block_size,
                capacity_blocks=self.prefix_cache_blocks,
                prefill_tokens_per_s=self.prefill_tokens_per_s,
            ),
            decode_pause_ms=self.decode_pause_ms,
            decode_pause_every_s=self.decode_pause_every_s,
        )

    def limits(self) -> Limits:
        from .vllm_protocol import Limits

        return Limits(
            model=self.model,
            max_model_len=self.max_model_len,
            default_max_tokens=self.default_max_tokens,
            embedding_dim=self.embedding_dim,
        )


@dataclass
class FaultsSection:
    drop_after_tokens: int | None = setting(
        None, min=0, help="drop each streaming connection after N content tokens"
    )
    drop_count: int | None = setting(None, min=1, help="only the next N requests get dropped")
    hang: bool = setting(False, help="accept /v1/* requests and never answer")
    stall: bool = setting(
        False, help="running requests get no more tokens; /health and /metrics still answer"
    )
    error_status: int | None = setting(
        None, min=400, max=599, help="answer /v1/* requests with this status"
    )
    error_count: int | None = setting(
        None, min=1, help="only the next N requests get error_status (default: all)"
    )
    unhealthy_for_s: float | None = setting(
        None, min=0, help="/health (and /v1/*) answer 503 for this long after start"
    )


@dataclass
class SimVllmConfig:
    sim: SimSettings = field(default_factory=SimSettings)
    faults: FaultsSection = field(default_factory=FaultsSection)
