"""Helpers shared by the benchmark scripts: timing, FLOP counting and writing results."""

import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_calls(fn, warmup: int, iters: int, device: str) -> list[float]:
    """Wall-clock seconds of ``iters`` calls of ``fn()`` under no_grad, after ``warmup`` untimed calls."""
    times = []
    with torch.no_grad():
        for step in range(warmup + iters):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
    return times


def median_seconds(fn, warmup: int, iters: int, device: str) -> float:
    return statistics.median(time_calls(fn, warmup, iters, device))


def count_flops(fn) -> int:
    """FLOPs of one ``fn()`` call as counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention
    kernels it has formulas for; the CPU flash-attention kernel of sdpa counts as zero)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def write_results(result: dict, output: str | None, markdown: str | None, markdown_text) -> None:
    """Writes ``result`` as JSON to ``output`` and ``markdown_text()`` to ``markdown`` (either may be None)."""
    for path, text in ((output, lambda: json.dumps(result, indent=2)), (markdown, markdown_text)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text())


def peak_memory_gb(fn, device: str) -> float:
    """Peak memory of one ``fn()`` call under no_grad: CUDA peak allocation, or on Linux CPUs the process's peak
    resident set (VmHWM, reset through ``/proc/self/clear_refs`` just before the call; includes resident weights)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")
    with torch.no_grad():
        fn()
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
    raise RuntimeError("VmHWM not found in /proc/self/status")
