"""Side-by-side timing of vistok against the original implementation (not a test).

`bench_titok.py`, `bench_maetok.py`, `bench_flextok.py` and `bench_larp.py` call `main(system, ...)` when given
`--reference PATH`: PATH is a checkout of the original repository that the user provides (bytedance/1d-tokenizer,
Hhhhhhao/continuous_tokenizer, apple/ml-flextok, hywang66/LARP; never part of vistok) with its requirements installed.
The original model is built with the original code and random weights, saved in its released checkpoint layout,
converted with `vistok-convert`, and both run on the same inputs in the same process. Calls alternate (original,
vistok, vistok, original, ...) so both see the same machine load. For each op (encode, decode) and batch size it
reports the median seconds of both, the vistok/original ratio, the peak memory of one call (CUDA: peak allocated; CPU:
rise of the resident set, Linux VmHWM) and the largest difference of the outputs (token ids must be equal).
"""

import argparse
import ctypes
import importlib
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from bench_common import synchronize, write_results


def _resident_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


_HIGH_MMAP_THRESHOLD = 1 << 30


def set_mmap_threshold(nbytes: int) -> bool:
    """glibc: allocations above `nbytes` get their own mmap, returned to the OS on free (and freed memory below the trim
    threshold stays in the process). High for timing (no page faults on reused activations, like jemalloc); low while
    measuring memory, so the resident set follows the live tensors. False where glibc's mallopt is unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    trim = (1 << 31) - 1 if nbytes >= _HIGH_MMAP_THRESHOLD else 0
    return bool(libc.mallopt(m_mmap_threshold, nbytes)) and bool(libc.mallopt(m_trim_threshold, trim))


def peak_memory_gb(fn, device: str) -> tuple[float, object]:
    """Peak memory one `fn()` call adds, and that call's output: CUDA peak allocated above the baseline, or on CPU the
    rise of the resident set's high-water mark (reset through /proc/self/clear_refs) above the resident set before the
    call, after `malloc_trim` and with a 64 KiB mmap threshold, so that the resident set follows the live tensors."""
    with torch.no_grad():
        if device.startswith("cuda"):
            synchronize(device)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            output = fn()
            synchronize(device)
            return (torch.cuda.max_memory_allocated() - base) / 2**30, output
        if not set_mmap_threshold(64 << 10):
            return float("nan"), fn()
        try:
            # return free heap pages to the OS: reusing them during the call faults them in again
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:  # no way to reset the high-water mark
                return float("nan"), fn()
            base = _resident_kb("VmRSS")
            output = fn()
            return (_resident_kb("VmHWM") - base) / 2**20, output
        finally:
            set_mmap_threshold(_HIGH_MMAP_THRESHOLD)


def max_difference(ours, theirs) -> float:
    """Largest absolute difference; integer tensors (token ids) must be equal (inf otherwise)."""
    ours, theirs = ours.detach().cpu(), theirs.detach().cpu()
    if ours.shape != theirs.shape:
        raise ValueError(f"outputs differ in shape: vistok {tuple(ours.shape)}, original {tuple(theirs.shape)}")
    if not ours.is_floating_point():
        return 0.0 if torch.equal(ours, theirs) else float("inf")
    return float((ours.float() - theirs.float()).abs().max())


def compare(op: str, batch_size: int, ours, theirs, args) -> dict:
    """Times `ours()` and `theirs()` alternately (the order flips every round), then measures memory and outputs."""
    times = {"vistok": [], "original": []}
    cpu_times = {"vistok": [], "original": []}
    calls = [("original", theirs), ("vistok", ours)]
    with torch.no_grad():
        for step in range(args.warmup + args.iters):
            for name, fn in calls if step % 2 == 0 else calls[::-1]:
                synchronize(args.device)
                start, cpu_start = time.perf_counter(), time.process_time()
                fn()
                synchronize(args.device)
                if step >= args.warmup:
                    times[name].append(time.perf_counter() - start)
                    cpu_times[name].append(time.process_time() - cpu_start)
    row = dict(op=op, batch_size=batch_size, original_s=statistics.median(times["original"]),
               vistok_s=statistics.median(times["vistok"]))
    row["ratio"] = row["vistok_s"] / row["original_s"]
    # CPU seconds of the process (all its threads): on a machine shared with other jobs the wall clock includes the
    # time the process waited for a core, its CPU time does not
    row["original_cpu_s"] = statistics.median(cpu_times["original"])
    row["vistok_cpu_s"] = statistics.median(cpu_times["vistok"])
    row["cpu_ratio"] = row["vistok_cpu_s"] / row["original_cpu_s"]
    # the memory-measured calls also give the outputs that are compared (one call each instead of two)
    row["original_peak_gb"], their_output = peak_memory_gb(theirs, args.device)
    row["vistok_peak_gb"], our_output = peak_memory_gb(ours, args.device)
    row["max_abs_diff"] = max_difference(our_output, their_output)
    print(json.dumps(row), flush=True)
    return row


def import_original(path: str, module: str, training_only: tuple[str, ...] = ()):
    """Imports `module` from the user's checkout of the original repository. `training_only`: modules the original
    imports at module level but the benchmark never calls (training losses, logging helpers); each one that cannot be
    imported is replaced by an empty module, so that their requirements need not be installed."""
    root = str(Path(path).resolve())
    if not Path(root).is_dir():
        raise SystemExit(f"--reference {path}: not a directory (give a checkout of the original repository)")
    sys.path.insert(0, root)
    for name in training_only:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise SystemExit(f"cannot import {module} from {root} ({error}); install the original's requirements") from error


def to_markdown(system: str, result: dict) -> str:
    lines = [
        f"# {system}: vistok vs the original implementation",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Device: {result['device']} ({result['threads']} threads), torch {result['torch']}; {result['model']}; median "
        f"of {result['iters']} alternating calls after {result['warmup']} warm-up. ratio = vistok / original time "
        "(< 1: vistok faster); CPU: the same with the process's CPU seconds (steadier than wall-clock time when other "
        "jobs share the cores). Peak memory: one call, above the resident/allocated memory before it.",
        "",
        "| op | batch | original s | vistok s | ratio | original CPU s | vistok CPU s | CPU ratio | original peak MB | "
        "vistok peak MB | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['op']} | {r['batch_size']} | {r['original_s']:.3f} | {r['vistok_s']:.3f} | {r['ratio']:.2f} | "
            f"{r['original_cpu_s']:.3f} | {r['vistok_cpu_s']:.3f} | {r['cpu_ratio']:.2f} | "
            f"{r['original_peak_gb'] * 1024:.1f} | {r['vistok_peak_gb'] * 1024:.1f} | {r['max_abs_diff']:.2e} |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("side by side with the original (--reference)")
    group.add_argument("--reference", default=None, metavar="PATH",
                       help="checkout of the original repository: time it against vistok on the same inputs")
    group.add_argument("--reference-batch-sizes", type=int, nargs="+", default=[1, 8])
    group.add_argument("--reference-size", default="released", choices=["released", "reduced"],
                       help="model size of the comparison (reduced: smaller widths/depths for slow machines)")
    group.add_argument("--reference-skip", nargs="+", default=[], metavar="OP:BATCH",
                       help="rows to leave out, e.g. decode:8 (a row too slow for the machine at hand)")


def main(system: str, build_pairs, args, command: str) -> dict:
    """`build_pairs(args, workdir)` returns (description, ops) where ops maps an op name to a function
    `batch_size -> (vistok_fn, original_fn)`; runs every op at every batch size and writes the table."""
    rows = []
    if not args.device.startswith("cuda"):
        set_mmap_threshold(_HIGH_MMAP_THRESHOLD)
    with tempfile.TemporaryDirectory(prefix=f"vistok-ref-{system}-") as workdir:
        description, ops = build_pairs(args, Path(workdir))
        # one untimed call of each side first (library and kernel initialisation), so that `--warmup 0` is fair
        ours, theirs = next(iter(ops.values()))(min(args.reference_batch_sizes))
        with torch.no_grad():
            theirs(), ours()
        for batch_size in args.reference_batch_sizes:
            for op, make in ops.items():
                if f"{op}:{batch_size}" in args.reference_skip:
                    continue
                ours, theirs = make(batch_size)
                rows.append(compare(op, batch_size, ours, theirs, args))
    result = dict(system=system, model=description, device=args.device, threads=torch.get_num_threads(),
                  torch=torch.__version__, warmup=args.warmup, iters=args.iters, command=command, rows=rows)
    write_results(result, args.output, args.markdown, lambda: to_markdown(system, result))
    return result
