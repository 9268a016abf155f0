"""``spotrelay sim vllm``: start the vLLM OpenAI-server simulator.

Flags are the main interface (they mirror vLLM's where vLLM has one:
``--port``, ``--max-num-seqs``, ``--max-model-len``, ``--served-model-name``);
the same keys can come from ``--config FILE.yaml`` (sections ``sim`` and
``faults``) or ``SPOTRELAY_SIM_*`` / ``SPOTRELAY_FAULTS_*`` variables.
Heavy imports (aiohttp, the server) happen in the handler.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from spotrelay.core.config import describe, load, setting

from .prefix_cache import (
    DEFAULT_BLOCK_TOKENS,
    DEFAULT_CAPACITY_BLOCKS,
    DEFAULT_PREFILL_TOKENS_PER_S,
)


@dataclass
class SimSection:
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
    sim: SimSection = field(default_factory=SimSection)
    faults: FaultsSection = field(default_factory=FaultsSection)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "vllm",
        parents=[common],
        help="vLLM OpenAI-server simulator (deterministic text, timing, faults)",
        description="A vLLM OpenAI-compatible server without a GPU: /v1/completions, "
        "/v1/chat/completions (SSE), /v1/embeddings, /v1/models, /health, /metrics with "
        "vLLM's names, and fault injection (flags or POST /_control/faults). "
        "See docs/simulator.md.",
        epilog=describe(SimVllmConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_server_flags(p)
    faults = p.add_argument_group("faults (also settable at run time: POST /_control/faults)")
    _add_fault_flags(faults)
    p.set_defaults(handler=run)


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    """The server's flags: what it binds and serves, its timing and capacity."""
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default 8000)")
    p.add_argument(
        "--model", "--served-model-name", dest="model", help="served model name (sim-model)"
    )
    p.add_argument("--ttft-ms", type=float, help="time to first token in ms (50)")
    p.add_argument("--itl-ms", type=float, help="inter-token latency in ms (10)")
    p.add_argument("--max-num-seqs", type=int, help="concurrent running requests (256)")
    p.add_argument("--max-model-len", type=int, help="context length in tokens (4096)")
    p.add_argument("--default-max-tokens", type=int, help="chat max_tokens when absent (128)")
    p.add_argument("--kv-cache-tokens", type=int, help="simulated KV cache size in tokens")
    p.add_argument("--embedding-dim", type=int, help="embedding vector length (256)")
    p.add_argument("--block-size", type=int, help="prefix-cache block size in tokens (16)")
    p.add_argument(
        "--prefix-cache-blocks", type=int, help="prefix-cache capacity in blocks (2048; 0: off)"
    )
    p.add_argument(
        "--prefill-tokens-per-s",
        type=float,
        help="prefill rate for uncached prompt tokens (3000; 0: instant)",
    )
    p.add_argument(
        "--api",
        choices=("vllm", "openai"),
        help="endpoints to serve: vllm (default) or openai (no /health, /version, /metrics)",
    )
    p.add_argument(
        "--decode-pause-ms",
        type=float,
        metavar="MS",
        help="hold decode this long (a long prefill of another request) every "
        "--decode-pause-every-s seconds (0: never)",
    )
    p.add_argument(
        "--decode-pause-every-s", type=float, metavar="S", help="how often decode pauses come"
    )
    p.add_argument(
        "--shutdown-timeout",
        dest="shutdown_timeout_s",
        type=float,
        help="seconds in-flight requests get on SIGTERM (0)",
    )


def _add_fault_flags(f: argparse._ArgumentGroup) -> None:
    """The fault flags: the keys of ``POST /_control/faults``, set from the start."""
    f.add_argument(
        "--drop-after-tokens",
        type=int,
        metavar="N",
        help="drop streaming connections after N content tokens",
    )
    f.add_argument("--drop-count", type=int, metavar="M", help="only for the next M requests")
    f.add_argument(
        "--hang", action="store_true", default=None, help="accept /v1/* requests and never answer"
    )
    f.add_argument(
        "--stall",
        action="store_true",
        default=None,
        help="running requests get no tokens (a hung GPU); /health and /metrics still answer",
    )
    f.add_argument("--error-status", type=int, metavar="S", help="answer /v1/* with status S")
    f.add_argument(
        "--error-count",
        type=int,
        metavar="N",
        help="only the next N requests get --error-status (default: all)",
    )
    f.add_argument(
        "--unhealthy-for-s",
        type=float,
        metavar="S",
        help="answer 503 on /health and /v1/* for S seconds after start",
    )


def build_config(args: argparse.Namespace) -> SimVllmConfig:
    sim_keys = [f for f in SimSection.__dataclass_fields__]
    fault_keys = [f for f in FaultsSection.__dataclass_fields__]
    overrides = {
        "sim": {k: getattr(args, k, None) for k in sim_keys},
        "faults": {k: getattr(args, k, None) for k in fault_keys},
    }
    return load(SimVllmConfig, args.config, overrides=overrides)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from spotrelay.core.config import ConfigError

    from .faults import FaultError, Faults
    from .vllm_server import SimSettings, serve

    cfg = build_config(args)
    pause, every = cfg.sim.decode_pause_ms, cfg.sim.decode_pause_every_s
    if (pause > 0) != (every > 0):
        raise ConfigError("sim.decode_pause_ms", "set together with sim.decode_pause_every_s")
    if pause > 0 and pause / 1000.0 >= every:
        raise ConfigError(
            "sim.decode_pause_ms", f"must be shorter than decode_pause_every_s ({every:g} s)", pause
        )
    settings = SimSettings(**vars(cfg.sim))
    faults = Faults()
    spec = {k: v for k, v in vars(cfg.faults).items() if v is not None and v is not False}
    try:
        faults.update(spec)
    except FaultError as exc:
        raise ConfigError("faults", str(exc)) from None
    asyncio.run(serve(settings, faults))
    return 0
