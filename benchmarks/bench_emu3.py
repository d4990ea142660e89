"""Emu3 vision tokenizer: vistok `Emu3VisionTokenizer` side by side with transformers' `Emu3VQVAE` (same random
weights, same process, calls alternating), for image encode/decode and clip encode/decode (not a test).

Default sizes are the release's (`Emu3VQVAEConfig()`: 8x spatial, 4x temporal, 32768 codes; 512x512 images and
4x512x512 clips = 4096 tokens each). Every row checks that both give the same codes (reconstruction max abs diff
reported) and reports tokens/s, the median seconds per call, the speed-up (transformers / vistok) and the peak memory
of one call (GPU: `max_memory_allocated`; CPU: peak resident memory of a fresh process, Linux VmHWM, weights and
libraries included, and the part of it above what was resident before the call, measured on a second call).

    python benchmarks/bench_emu3.py --markdown benchmarks/results/emu3_cpu.md
    python benchmarks/bench_emu3.py --image-size 64 --base-channels 128 --iters 3   # reduced, for small CPUs
"""

import argparse
import ctypes
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_common import DTYPES, synchronize, write_results
from transformers import Emu3VQVAE, Emu3VQVAEConfig

from vistok import Emu3VisionTokenizer


PHASES = ("image_encode", "image_decode", "clip_encode", "clip_decode")


def build(base_channels: int | None, dtype: torch.dtype, device: str) -> tuple[Emu3VisionTokenizer, Emu3VQVAE]:
    config = Emu3VQVAEConfig()
    if base_channels is not None:
        config = Emu3VQVAEConfig(base_channels=base_channels, hidden_size=base_channels * 4)
    torch.manual_seed(0)
    ours = Emu3VisionTokenizer(config).eval()
    theirs = Emu3VQVAE(config).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours.to(device=device, dtype=dtype), theirs.to(device=device, dtype=dtype)


def inputs(phase: str, size: int, frames: int, dtype, device, model: Emu3VisionTokenizer) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    shape = (1, 3, size, size) if phase.startswith("image") else (1, frames, 3, size, size)
    pixels = (torch.rand(*shape, generator=generator) * 2 - 1).to(device=device, dtype=dtype)
    if phase.endswith("encode"):
        return pixels
    with torch.no_grad():
        return model.encode(pixels).tokens


def calls(phase: str, ours, theirs, data: torch.Tensor):
    """(vistok call, transformers call) for a phase; transformers' encode needs `image_sizes`."""
    if phase.endswith("encode"):
        sizes = [list(data.shape[-2:])] * data.shape[0]
        return (lambda: ours.encode(data).tokens), (lambda: theirs.encode(data, image_sizes=sizes).image_tokens)
    return (lambda: ours.decode(data).reconstruction), (lambda: theirs.decode(data))


def _compare(phase: str, a, b) -> float:
    if phase.endswith("encode"):
        b = torch.stack(list(b))
        if not torch.equal(a, b):
            raise AssertionError(f"{phase}: vistok and transformers codes differ")
        return 0.0
    return float((a.float() - b.float()).abs().max())


def time_alternating(phase, ours, theirs, data, warmup, iters, device, inline_memory=False) -> dict:
    """Median seconds per call of each side, alternating; with `inline_memory` (CPU) also the largest peak resident
    memory of a call above what was resident before it (`{side}_call_gb`), measured on the timed calls themselves."""
    mine, reference = calls(phase, ours, theirs, data)
    times = {"vistok": [], "transformers": []}
    call_gb = {"vistok": 0.0, "transformers": 0.0}
    first = {}  # the outputs of the first calls, compared after them (no extra call: a 512 px decode is minutes on CPU)
    with torch.no_grad():
        for step in range(warmup + iters):
            order = [("vistok", mine), ("transformers", reference)]
            for name, fn in order if step % 2 == 0 else order[::-1]:
                if inline_memory:
                    before = _reset_peak_resident()
                synchronize(device)
                start = time.perf_counter()
                out = fn()
                synchronize(device)
                if step >= warmup:
                    times[name].append(time.perf_counter() - start)
                if inline_memory:
                    call_gb[name] = max(call_gb[name], _resident_gb("VmHWM") - before)
                if step == 0:
                    first[name] = out
                del out
    max_diff = _compare(phase, first["vistok"], first["transformers"])
    row = dict(max_abs_diff=max_diff, **{f"{k}_seconds": statistics.median(v) for k, v in times.items()})
    if inline_memory:
        row |= {f"{k}_call_gb": v for k, v in call_gb.items()}
    return row


def _resident_gb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1e6
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak_resident() -> float:
    """Returns freed heap memory to the system, resets the process's peak resident memory (VmHWM) to the current
    resident memory and returns that (GB)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return _resident_gb("VmRSS")


def measure_peak_memory(which: str, phase: str, size: int, frames: int, base_channels, dtype: str, device: str) -> list:
    """In a fresh process: [peak memory, peak memory above what was resident before the call] (GB) of one call of
    `which` ("vistok"/"transformers") for `phase`."""
    ours, theirs = build(base_channels, DTYPES[dtype], device)
    data = inputs(phase, size, frames, DTYPES[dtype], device, ours)
    fn = calls(phase, ours, theirs, data)[0 if which == "vistok" else 1]
    del ours, theirs  # only the measured model stays referenced (by `fn`)
    with torch.no_grad():
        fn()  # first call: lazy kernel and library initialisation, not part of the call's working memory
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 1e9
    else:
        before = _reset_peak_resident()
    with torch.no_grad():
        fn()
    peak = torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else _resident_gb("VmHWM")
    return [peak, peak - before]


def peak_memory_subprocess(*args) -> list:
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_emu3 as b; "
            f"print(json.dumps(b.measure_peak_memory(*{args!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    dtype = DTYPES[args.dtype]
    ours, theirs = build(args.base_channels, dtype, args.device)
    rows = []
    for phase in args.phases:
        data = inputs(phase, args.image_size, args.frames, dtype, args.device, ours)
        tokens = (args.image_size // ours.spatial_factor) ** 2 * (1 if phase.startswith("image") else args.frames // 4)
        row = dict(phase=phase, image_size=args.image_size, frames=1 if phase.startswith("image") else args.frames,
                   tokens=tokens, dtype=args.dtype)
        if args.iters:
            row |= time_alternating(phase, ours, theirs, data, args.warmup, args.iters, args.device, args.inline_memory)
            row["speedup"] = row["transformers_seconds"] / row["vistok_seconds"]
            row["vistok_tokens_per_s"] = tokens / row["vistok_seconds"]
            row["transformers_tokens_per_s"] = tokens / row["transformers_seconds"]
        if args.memory and not args.inline_memory:
            for which in ("vistok", "transformers"):
                row[f"{which}_peak_gb"], row[f"{which}_call_gb"] = peak_memory_subprocess(
                    which, phase, args.image_size, args.frames, args.base_channels, args.dtype, args.device)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return dict(device=args.device, cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                torch=torch.__version__, base_channels=args.base_channels or 256, warmup=args.warmup,
                inline_memory=args.inline_memory,
                iters=args.iters, rows=rows)


def to_markdown(result: dict, command: str) -> str:
    lines = [
        "# Emu3 vision tokenizer benchmark: vistok vs transformers `Emu3VQVAE`", "",
        f"Command: `{command}`", "",
        f"Device {result['device']} ({result['cpu']}, {result['threads']} threads), torch {result['torch']}, base "
        f"channels {result['base_channels']} (release: 256), median of {result['iters']} alternating calls.", "",
        *(["Memory measured on the timed calls in this process (`--inline-memory`): the largest peak resident memory "
           "of a call above what was resident before it (after returning freed heap memory to the system).", ""]
          if result.get("inline_memory") else []),
        "| phase | input | tokens | vistok s | transformers s | speed-up | vistok tok/s | transformers tok/s | "
        "peak GB vistok / transformers | of which the call | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        memory = (f"{r['vistok_peak_gb']:.2f} / {r['transformers_peak_gb']:.2f}" if "vistok_peak_gb" in r else "-")
        call = (f"{r['vistok_call_gb']:.3f} / {r['transformers_call_gb']:.3f}" if "vistok_call_gb" in r else "-")
        shape = f"{r['frames']}x{r['image_size']}x{r['image_size']}"
        timing = (f"{r['vistok_seconds']:.3f} | {r['transformers_seconds']:.3f} | {r['speedup']:.2f}x | "
                  f"{r['vistok_tokens_per_s']:.1f} | {r['transformers_tokens_per_s']:.1f}" if "speedup" in r
                  else "- | - | - | - | -")
        diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "-"
        lines.append(f"| {r['phase']} | {shape} | {r['tokens']} | {timing} | {memory} | {call} | {diff} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--base-channels", type=int, default=None, help="reduce the width (release: 256)")
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3, help="0: memory only")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--inline-memory", action="store_true",
                        help="CPU: measure each timed call's peak above the memory resident before it in this process "
                             "(no extra calls in fresh processes; the process's own peak then holds both models)")
    parser.add_argument("--output", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    result = run(args)
    command = "python benchmarks/bench_emu3.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_results(result, args.output, args.markdown, lambda: to_markdown(result, command))
    print(to_markdown(result, command))


if __name__ == "__main__":
    main()
