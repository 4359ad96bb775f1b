"""Device, precision and memory-format choices, and deterministic seeding.

``precision="auto"`` uses bf16 autocast only where the hardware computes bf16 natively: CUDA
devices that support it, and CPUs with AVX512-BF16 or AMX. Elsewhere bf16 is emulated — on the
2-core AMD EPYC (AVX2) development machine a bf16 3D convolution was measured ~40x slower than
fp32 — so fp32 is chosen.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from .config import RuntimeConfig

__all__ = ["Runtime", "cpu_has_native_bf16", "frozen", "resolve_runtime", "seed_everything"]

log = logging.getLogger(__name__)


@cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises AVX512-BF16 or AMX-BF16 (Linux ``/proc/cpuinfo``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool({"avx512_bf16", "amx_bf16"} & flags)


@dataclass(frozen=True)
class Runtime:
    """Resolved runtime: a concrete device, autocast dtype (or None) and memory format."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for network forward passes (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Move an input tensor to the device (and channels-last format when enabled)."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() in (4, 5):
            fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
            x = x.contiguous(memory_format=fmt)
        return x

    def prepare_module(self, module: torch.nn.Module) -> torch.nn.Module:
        module.to(self.device)
        if self.channels_last:
            for param in module.parameters():
                if param.dim() in (4, 5):
                    fmt = torch.channels_last if param.dim() == 4 else torch.channels_last_3d
                    param.data = param.data.contiguous(memory_format=fmt)
        return module


def resolve_runtime(cfg: RuntimeConfig) -> Runtime:
    """Turn ``RuntimeConfig`` choices ("auto", ...) into a concrete :class:`Runtime`.

    Raises
    ------
    ValueError
        If the requested device is not available (e.g. ``"cuda"`` on a machine without CUDA).
    """
    dev = cfg.device
    if dev == "auto":
        if torch.cuda.is_available():
            dev = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            dev = "mps"
        else:
            dev = "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.device!r} requested but CUDA is not available here")
    if dev == "mps" and not (torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but MPS is not available here")
    device = torch.device(dev)

    precision = cfg.precision
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "cpu":
            precision = "bf16" if cpu_has_native_bf16() else "fp32"
        else:
            precision = "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' is only supported on CUDA devices")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    if cfg.channels_last == "auto":
        channels_last = device.type == "cpu"
    else:
        channels_last = cfg.channels_last == "on"
    if cfg.threads > 0 and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    rt = Runtime(device=device, autocast_dtype=dtype, channels_last=channels_last)
    log.info(
        "runtime: device=%s precision=%s channels_last=%s", device, rt.precision, channels_last
    )
    return rt


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (used before building networks)."""
    random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def frozen(*modules: torch.nn.Module) -> Iterator[None]:
    """Put modules in eval mode without gradients for the duration of the block."""
    states = [(m, m.training, [p.requires_grad for p in m.parameters()]) for m in modules]
    try:
        for m in modules:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        yield
    finally:
        for m, training, flags in states:
            m.train(training)
            for p, flag in zip(m.parameters(), flags, strict=True):
                p.requires_grad_(flag)
