"""Host and GPU statistics for the agent's ``/metrics`` (psutil; NVML when present).

NVML comes from the optional ``nvidia-ml-py`` package (``pip install
'spotrelay[gpu]'``). Without it, or without a GPU driver, GPU stats are
skipped silently after one info line: a CPU-only test host is a normal case.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psutil

log = logging.getLogger("spotrelay.agent.hoststats")


@dataclass
class GpuStats:
    index: int
    name: str
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float | None = None


@dataclass
class HostStats:
    cpu_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    load1: float
    gpus: list[GpuStats] = field(default_factory=list)


class HostSampler:
    """Samples the host; NVML is initialised once, lazily, and only if importable."""

    def __init__(self, use_gpu: bool = True) -> None:
        self._nvml: Any = None
        self._gpu_checked = not use_gpu
        psutil.cpu_percent(interval=None)  # prime: the first call always returns 0.0

    def _init_nvml(self) -> None:
        self._gpu_checked = True
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # ImportError, NVMLError (no driver), ...
            log.info("GPU stats disabled: %s", exc.__class__.__name__)
            return
        self._nvml = pynvml

    def gpus(self) -> list[GpuStats]:
        if not self._gpu_checked:
            self._init_nvml()
        nv = self._nvml
        if nv is None:
            return []
        out = []
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                util = nv.nvmlDeviceGetUtilizationRates(handle)
                mem = nv.nvmlDeviceGetMemoryInfo(handle)
                try:
                    temp = float(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
                except Exception:
                    temp = None
                name = nv.nvmlDeviceGetName(handle)
                out.append(
                    GpuStats(
                        index=i,
                        name=name.decode() if isinstance(name, bytes) else str(name),
                        utilization_percent=float(util.gpu),
                        memory_used_bytes=int(mem.used),
                        memory_total_bytes=int(mem.total),
                        temperature_c=temp,
                    )
                )
        except Exception as exc:
            log.warning("NVML query failed: %s", exc)
        return out

    def sample(self) -> HostStats:
        mem = psutil.virtual_memory()
        try:
            load1 = psutil.getloadavg()[0]
        except (OSError, AttributeError):
            load1 = 0.0
        return HostStats(
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_used_bytes=int(mem.total - mem.available),
            memory_total_bytes=int(mem.total),
            load1=load1,
            gpus=self.gpus(),
        )
