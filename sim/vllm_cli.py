"""``spotrelay sim vllm``: start the vLLM OpenAI-server simulator.

Flags are the main interface (they mirror vLLM's where vLLM has one:
``--port``, ``--max-num-seqs``, ``--max-model-len``, ``--served-model-name``);
the same keys can come from ``--config FILE.yaml`` (sections ``sim`` and
``faults``) or ``SPOTRELAY_SIM_*`` / ``SPOTRELAY_FAULTS_*`` variables.
Heavy imports (aiohttp, the server) happen in the handler.
"""

from __future__ import annotations

import argparse

from spotrelay.core.cli import add_command
from spotrelay.core.config import load
from spotrelay.core.config_flags import Flag, add_flags, overrides

from .vllm_settings import SimVllmConfig

SERVER_FLAGS = {
    "host": Flag("sim.host", "address to bind (default 127.0.0.1)"),
    "port": Flag("sim.port", "port to bind (default 8000)", type=int),
    "model": Flag("sim.model", "served model name (sim-model)", aliases=("--served-model-name",)),
    "ttft_ms": Flag("sim.ttft_ms", "time to first token in ms (50)", type=float),
    "itl_ms": Flag("sim.itl_ms", "inter-token latency in ms (10)", type=float),
    "max_num_seqs": Flag("sim.max_num_seqs", "concurrent running requests (256)", type=int),
    "max_model_len": Flag("sim.max_model_len", "context length in tokens (4096)", type=int),
    "default_max_tokens": Flag(
        "sim.default_max_tokens", "chat max_tokens when absent (128)", type=int
    ),
    "kv_cache_tokens": Flag("sim.kv_cache_tokens", "simulated KV cache size in tokens", type=int),
    "embedding_dim": Flag("sim.embedding_dim", "embedding vector length (256)", type=int),
    "block_size": Flag("sim.block_size", "prefix-cache block size in tokens (16)", type=int),
    "prefix_cache_blocks": Flag(
        "sim.prefix_cache_blocks", "prefix-cache capacity in blocks (2048; 0: off)", type=int
    ),
    "prefill_tokens_per_s": Flag(
        "sim.prefill_tokens_per_s",
        "prefill rate for uncached prompt tokens (3000; 0: instant)",
        type=float,
    ),
    "api": Flag(
        "sim.api",
        "endpoints to serve: vllm (default) or openai (no /health, /version, /metrics)",
        choices=("vllm", "openai"),
    ),
    "decode_pause_ms": Flag(
        "sim.decode_pause_ms",
        "hold decode this long (a long prefill of another request) every "
        "--decode-pause-every-s seconds (0: never)",
        type=float,
        metavar="MS",
    ),
    "decode_pause_every_s": Flag(
        "sim.decode_pause_every_s", "how often decode pauses come", type=float, metavar="S"
    ),
    "shutdown_timeout": Flag(
        "sim.shutdown_timeout_s",
        "seconds in-flight requests get on SIGTERM (0)",
        type=float,
        metavar="SHUTDOWN_TIMEOUT_S",
    ),
}

# The keys of ``POST /_control/faults``, set from the start.
FAULT_FLAGS = {
    "drop_after_tokens": Flag(
        "faults.drop_after_tokens",
        "drop streaming connections after N content tokens",
        type=int,
        metavar="N",
    ),
    "drop_count": Flag("faults.drop_count", "only for the next M requests", type=int, metavar="M"),
    "hang": Flag("faults.hang", "accept /v1/* requests and never answer", switch=True),
    "stall": Flag(
        "faults.stall",
        "running requests get no tokens (a hung GPU); /health and /metrics still answer",
        switch=True,
    ),
    "error_status": Flag(
        "faults.error_status", "answer /v1/* with status S", type=int, metavar="S"
    ),
    "error_count": Flag(
        "faults.error_count",
        "only the next N requests get --error-status (default: all)",
        type=int,
        metavar="N",
    ),
    "unhealthy_for_s": Flag(
        "faults.unhealthy_for_s",
        "answer 503 on /health and /v1/* for S seconds after start",
        type=float,
        metavar="S",
    ),
}


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "vllm",
        help="vLLM OpenAI-server simulator (deterministic text, timing, faults)",
        description="A vLLM OpenAI-compatible server without a GPU: /v1/completions, "
        "/v1/chat/completions (SSE), /v1/embeddings, /v1/models, /health, /metrics with "
        "vLLM's names, and fault injection (flags or POST /_control/faults). "
        "See docs/simulator.md.",
        config=SimVllmConfig,
        flags=SERVER_FLAGS,
        handler=run,
    )
    faults = p.add_argument_group("faults (also settable at run time: POST /_control/faults)")
    add_flags(faults, FAULT_FLAGS)


def build_config(args: argparse.Namespace) -> SimVllmConfig:
    return load(SimVllmConfig, args.config, overrides=overrides(args, SERVER_FLAGS | FAULT_FLAGS))


def run(args: argparse.Namespace) -> int:
    import asyncio

    from spotrelay.core.config import ConfigError

    from .faults import FaultError, Faults
    from .vllm_server import serve

    cfg = build_config(args)
    pause, every = cfg.sim.decode_pause_ms, cfg.sim.decode_pause_every_s
    if (pause > 0) != (every > 0):
        raise ConfigError("sim.decode_pause_ms", "set together with sim.decode_pause_every_s")
    if pause > 0 and pause / 1000.0 >= every:
        raise ConfigError(
            "sim.decode_pause_ms", f"must be shorter than decode_pause_every_s ({every:g} s)", pause
        )
    settings = cfg.sim
    faults = Faults()
    spec = {k: v for k, v in vars(cfg.faults).items() if v is not None and v is not False}
    try:
        faults.update(spec)
    except FaultError as exc:
        raise ConfigError("faults", str(exc)) from None
    asyncio.run(serve(settings, faults))
    return 0
