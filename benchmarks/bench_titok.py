"""TiTok encode/decode benchmark at released sizes with random weights (not a test).

For every (variant, dtype, attention implementation, batch size) it reports images/s, FLOPs per image (counted with
``torch.utils.flop_counter``), the achieved GFLOP/s and its fraction of this machine's matmul peak (a 4096x4096
``torch.mm`` in the same dtype, measured in the same run), and the peak resident memory of encode and decode measured
in fresh subprocesses.

    python benchmarks/bench_titok.py --output benchmarks/results/titok_cpu.json --markdown benchmarks/results/titok_cpu.md

With `--reference PATH` (a checkout of bytedance/1d-tokenizer) it instead times the original `TiTok` against vistok
side by side (see `bench_reference.py`); `--reference-config NAME` picks the original inference yaml
(`configs/infer/TiTok/NAME.yaml`, default titok_s128); `--reference-size reduced` makes both the encoder and decoder
ViT "small".
"""

import argparse
import ctypes
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import bench_reference
from bench_common import DTYPES, count_flops, median_seconds, synchronize, write_results

import vistok
from vistok.modeling.configuration_titok import TiTokConfig


def tune_glibc_allocator() -> bool:
    """Keeps freed memory in the process instead of returning it to the OS.

    glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh mmap and unmaps it on free, so
    each large activation (a ViT-L MLP output at batch 8 is 38 MB) is page-faulted in again on every call: that cost
    up to 15% of an encode here. Raising the mmap and trim thresholds is the glibc equivalent of running PyTorch CPU
    inference with jemalloc/tcmalloc. Returns False where glibc's ``mallopt`` is unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, (1 << 31) - 1))


def matmul_peak_gflops(dtype: torch.dtype, device: str, size: int = 4096, repeats: int = 5) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


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


def _resident_gb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1e6
    raise RuntimeError(f"{field} not found in /proc/self/status")


def measure_peak_memory(variant, phase, batch_size, dtype, attn, device) -> dict:
    """Runs in a fresh process: builds the model, then measures the peak resident memory (Linux VmHWM, reset through
    /proc/self/clear_refs after construction) of one `phase` call. Includes the resident weights."""
    model = build_model(variant, DTYPES[dtype], attn, device)
    fn = phase_fn(model, phase, batch_size, DTYPES[dtype], device)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    Path("/proc/self/clear_refs").write_text("5")
    before = _resident_gb("VmRSS")
    with torch.no_grad():
        fn()
    if device.startswith("cuda"):
        return dict(peak_memory_gb=torch.cuda.max_memory_allocated() / 1e9)
    return dict(peak_memory_gb=_resident_gb("VmHWM"), resident_before_gb=before)


def peak_memory_subprocess(variant, phase, batch_size, dtype, attn, device) -> dict:
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_titok as b; "
        f"print(json.dumps(b.measure_peak_memory({variant!r}, {phase!r}, {batch_size}, {dtype!r}, {attn!r}, "
        f"{device!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def reference_pairs(args, workdir: Path):
    """The original TiTok (random weights, its own init) saved as a hub checkpoint and converted to vistok."""
    original_titok = bench_reference.import_original(args.reference, "modeling.titok")
    from omegaconf import OmegaConf

    from vistok.conversion.__main__ import main as convert_main

    config = OmegaConf.load(Path(args.reference) / "configs" / "infer" / "TiTok" / f"{args.reference_config}.yaml")
    if args.reference_size == "reduced":
        config.model.vq_model.vit_enc_model_size = config.model.vq_model.vit_dec_model_size = "small"
    torch.manual_seed(0)
    original = original_titok.TiTok(config).eval().to(args.device)
    original.save_pretrained(workdir / "original")
    assert convert_main(["titok", str(workdir / "original"), str(workdir / "vistok")]) == 0
    ours = vistok.TiTokModel.from_pretrained(workdir / "vistok").eval().to(args.device)
    size, vae = ours.config.image_size, ours.config.quantize_mode == "vae"
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(max(args.reference_batch_sizes), 3, size, size, generator=generator).to(args.device)

    def encode(batch_size):
        x = images[:batch_size]
        if vae:  # posterior mean, [B, C, 1, N] -> [B, N, C]
            return (lambda: ours.encode(x).latents,
                    lambda: original.encode(x)[1].mean.squeeze(2).transpose(1, 2))
        return lambda: ours.encode(x).tokens, lambda: original.encode(x)[1]["min_encoding_indices"].flatten(1)

    def decode(batch_size):
        with torch.no_grad():
            encoded = ours.encode(images[:batch_size])
        if vae:
            latents = encoded.latents
            return lambda: ours.decode(latents).reconstruction, lambda: original.decode(latents.transpose(1, 2)[:, :, None])
        tokens = encoded.tokens
        return lambda: ours.decode(tokens).reconstruction, lambda: original.decode_tokens(tokens)

    described = f"original `TiTok` from configs/infer/TiTok/{args.reference_config}.yaml ({args.reference_size} size)"
    return described, {"encode": encode, "decode": decode}


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
    parser.add_argument("--default-malloc", action="store_true", help="keep glibc's default allocator settings")
    parser.add_argument("--output", default=None)
    parser.add_argument("--markdown", default=None)
    bench_reference.add_arguments(parser)
    parser.add_argument("--reference-config", default="titok_s128", help="original inference yaml name (--reference)")
    args = parser.parse_args(argv)
    allocator_tuned = False if args.default_malloc else tune_glibc_allocator()
    command = "python benchmarks/bench_titok.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.reference:
        return bench_reference.main("TiTok", reference_pairs, args, command)

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
                        # torch's FLOP counter has no formula for the CPU flash-attention kernel: count the same math
                        # through the eager path so sdpa and eager rows are measured against equal work
                        model.set_attn_implementation("eager")
                        flops = count_flops(fn)
                        model.set_attn_implementation(attn)
                        seconds = median_seconds(fn, args.warmup, args.iters, args.device)
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
                memory = peak_memory_subprocess(variant, phase, max(args.batch_sizes), "float32", "sdpa", args.device)
                rows.append(dict(variant=variant, phase=phase, dtype="float32", attn="sdpa",
                                 batch_size=max(args.batch_sizes), **memory))
                print(json.dumps(rows[-1]), flush=True)
    result = dict(device=args.device, cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                  torch=torch.__version__, allocator_tuned=allocator_tuned, matmul_peak_gflops=peaks, rows=rows,
                  command="python benchmarks/bench_titok.py " + " ".join(sys.argv[1:] if argv is None else argv))
    write_results(result, args.output, args.markdown, lambda: to_markdown(result))
    return result


def to_markdown(result: dict) -> str:
    lines = [f"Command: `{result['command']}`", "",
             f"Device: {result['device']} ({result['threads']} threads), torch {result['torch']}, glibc allocator "
             f"{'tuned' if result['allocator_tuned'] else 'default'}; best matmul peak: "
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
        lines += ["", "Peak resident memory of one call (float32, sdpa; includes the resident weights):", "",
                  "| variant | phase | batch | resident before the call (GB) | peak during the call (GB) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['phase']} | {r['batch_size']} | {r.get('resident_before_gb', float('nan')):.2f} "
                  f"| {r['peak_memory_gb']:.2f} |" for r in memory]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
