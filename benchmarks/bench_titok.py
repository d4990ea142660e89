"""TiTok encode/decode benchmark at released sizes with random weights (not a test).

For every (variant, dtype, attention implementation, batch size) it reports images/s, FLOPs per image (counted with
``torch.utils.flop_counter``), the achieved GFLOP/s and its fraction of this machine's matmul peak (a 4096x4096
``torch.mm`` in the same dtype, measured in the same run), and the peak resident memory of encode and decode measured
in fresh subprocesses.

    python benchmarks/bench_titok.py --output benchmarks/results/titok_cpu.json --markdown benchmarks/results/titok_cpu.md
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import vistok
from vistok.modeling.configuration_titok import TiTokConfig


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def matmul_peak_gflops(dtype: torch.dtype, device: str, size: int = 4096, repeats: int = 5) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_model(variant: str, dtype: torch.dtype, attn: str, device: str):
    config = TiTokConfig.from_variant(variant)
    config._attn_implementation = attn
    torch.manual_seed(0)
    model = vistok.TiTokModel(config).eval()
    return model.to(device=device, dtype=dtype) if dtype != torch.float32 else model.to(device)


def phase_fn(model, phase: str, batch_size: int, dtype: torch.dtype, device: str):
    size = model.config.image_size
    pixel_values = torch.rand(batch_size, 3, size, size, device=device, dtype=dtype)
    with torch.no_grad():
        encoded = model.encode(pixel_values)
    source = encoded.tokens if encoded.tokens is not None else encoded.latents
    if phase == "encode":
        return lambda: model.encode(pixel_values)
    return lambda: model.decode(source)


def count_flops(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def time_fn(fn, device: str, warmup: int, iters: int) -> float:
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_subprocess(variant, phase, batch_size, dtype, attn, device) -> float:
    """Peak resident memory (GB) of a fresh process that builds the model and runs one `phase` call."""
    code = (
        "import resource, sys, torch; sys.argv=['x']; "
        f"sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_titok as b; "
        f"m = b.build_model({variant!r}, b.DTYPES[{dtype!r}], {attn!r}, {device!r}); "
        f"fn = b.phase_fn(m, {phase!r}, {batch_size}, b.DTYPES[{dtype!r}], {device!r}); "
        "torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None; "
        "exec('with torch.no_grad(): fn()'); "
        "print(torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() and "
        f"{device!r}.startswith('cuda') else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["titok_l32", "titok_b64", "titok_s128", "titok_bl128_vq8k"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    parser.add_argument("--attn", nargs="+", default=["sdpa", "eager"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--phases", nargs="+", default=["encode", "decode"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (fp32, sdpa, largest batch)")
    parser.add_argument("--output", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)

    peaks = {name: matmul_peak_gflops(DTYPES[name], args.device) for name in args.dtypes}
    print(f"initial matmul peak ({args.device}, {torch.get_num_threads()} threads): "
          + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()), flush=True)
    rows = []
    for variant in args.variants:
        for dtype_name in args.dtypes:
            for attn in args.attn:
                model = build_model(variant, DTYPES[dtype_name], attn, args.device)
                for phase in args.phases:
                    for batch_size in args.batch_sizes:
                        fn = phase_fn(model, phase, batch_size, DTYPES[dtype_name], args.device)
                        flops = count_flops(fn)
                        seconds = time_fn(fn, args.device, args.warmup, args.iters)
                        # the peak is re-measured next to every row: on a shared machine both move together
                        peak = max(peaks[dtype_name], matmul_peak_gflops(DTYPES[dtype_name], args.device, repeats=3))
                        peaks[dtype_name] = peak
                        gflops = flops / seconds / 1e9
                        row = dict(variant=variant, phase=phase, dtype=dtype_name, attn=attn, batch_size=batch_size,
                                   images_per_s=batch_size / seconds, gflop_per_image=flops / batch_size / 1e9,
                                   achieved_gflops=gflops, matmul_peak_gflops=peak,
                                   fraction_of_peak=gflops / peak)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                del model
    if args.memory:
        for variant in args.variants:
            for phase in args.phases:
                gb = peak_memory_subprocess(variant, phase, max(args.batch_sizes), "float32", "sdpa", args.device)
                rows.append(dict(variant=variant, phase=phase, dtype="float32", attn="sdpa",
                                 batch_size=max(args.batch_sizes), peak_memory_gb=gb))
                print(json.dumps(rows[-1]), flush=True)
    result = dict(device=args.device, cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                  torch=torch.__version__, matmul_peak_gflops=peaks, rows=rows)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(to_markdown(result))
    return result


def to_markdown(result: dict) -> str:
    lines = [f"Device: {result['device']} ({result['threads']} threads), torch {result['torch']}; matmul peak: "
             + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in result["matmul_peak_gflops"].items()), "",
             "| variant | phase | dtype | attn | batch | images/s | GFLOP/image | GFLOP/s | % of matmul peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "images_per_s" in r:
            lines.append(f"| {r['variant']} | {r['phase']} | {r['dtype']} | {r['attn']} | {r['batch_size']} | "
                         f"{r['images_per_s']:.3f} | {r['gflop_per_image']:.1f} | {r['achieved_gflops']:.1f} | "
                         f"{100 * r['fraction_of_peak']:.1f}% |")
    memory = [r for r in result["rows"] if "peak_memory_gb" in r]
    if memory:
        lines += ["", "| variant | phase | batch | peak memory (GB) |", "|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['phase']} | {r['batch_size']} | {r['peak_memory_gb']:.2f} |" for r in memory]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
