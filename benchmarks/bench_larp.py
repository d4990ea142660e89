"""LARP tokenizer and generator throughput at the released sizes (random weights; not a test).

Tokenizer (`LARPConfig.from_variant("larp_l_long")`, 16x128x128 clips, 1024 tokens): times `encode` (clips -> ids)
and `decode` (ids -> clips) and reports clips/s, tokens/s, GFLOP per clip and the peak memory of one call.
Generator (`LARPARConfig.from_variant("larp_l_long_ar")`, optional with `--ar-tokens N`): times `generate` of N codes
(greedy, KV cache, with and without classifier-free guidance) and reports codes/s.

    python benchmarks/bench_larp.py --markdown benchmarks/results/larp_cpu.md
"""

import argparse
import json
import platform
import statistics
import sys

import torch
from bench_common import DTYPES, count_flops, peak_memory_gb, time_calls, write_results

from vistok import LARPARConfig, LARPARForCausalLM, LARPConfig, LARPModel


def _timed(fn, args) -> tuple[float, float]:
    times = time_calls(fn, args.warmup, args.iters, args.device)
    return statistics.median(times), min(times)


def bench_tokenizer(args, dtype_name: str, attn: str) -> list[dict]:
    config = LARPConfig.from_variant("larp_l_long")
    config._attn_implementation = attn
    torch.manual_seed(0)
    model = LARPModel(config).eval().to(device=args.device, dtype=DTYPES[dtype_name])
    params = sum(p.numel() for p in model.parameters()) / 1e6
    clips = torch.rand(args.batch_size, config.num_frames, 3, 128, 128, device=args.device).to(DTYPES[dtype_name])
    with torch.no_grad():
        tokens = model.encode(clips).tokens
    rows = []
    for phase, fn in (("encode", lambda: model.encode(clips)), ("decode", lambda: model.decode(tokens))):
        flops = count_flops(fn)
        seconds, best = _timed(fn, args)
        memory = peak_memory_gb(fn, args.device) if args.memory else None
        row = dict(model="larp_l_long", params_m=round(params, 1), phase=phase, dtype=dtype_name, attn=attn,
                   batch_size=args.batch_size, seconds=seconds, best_seconds=best,
                   clips_per_s=args.batch_size / seconds, tokens_per_s=args.batch_size * config.num_latent_tokens / seconds,
                   best_tokens_per_s=args.batch_size * config.num_latent_tokens / best,
                   gflop_per_clip=flops / args.batch_size / 1e9, peak_memory_gb=memory)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def bench_generator(args) -> list[dict]:
    config = LARPARConfig.from_variant("larp_l_long_ar")
    torch.manual_seed(0)
    model = LARPARForCausalLM(config).eval().to(args.device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    prompt = model.build_prompt(class_labels=torch.arange(args.batch_size) % config.num_classes)
    rows = []
    for cfg_scale in (None, 1.25):
        def fn(cfg_scale=cfg_scale):
            return model.generate(prompt, max_new_tokens=args.ar_tokens, min_new_tokens=args.ar_tokens,
                                  do_sample=False, cfg_scale=cfg_scale)
        seconds, best = _timed(fn, args)
        row = dict(model="larp_l_long_ar", params_m=round(params, 1), phase=f"generate cfg={cfg_scale}",
                   dtype="float32", attn="sdpa", batch_size=args.batch_size, new_tokens=args.ar_tokens,
                   seconds=seconds, best_seconds=best, tokens_per_s=args.batch_size * args.ar_tokens / seconds,
                   best_tokens_per_s=args.batch_size * args.ar_tokens / best)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def to_markdown(result: dict, command: str) -> str:
    lines = [
        "# LARP benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"Device: {result['device']} ({result['cpu']}, {result['threads']} threads), torch {result['torch']}; random "
        f"weights at the released sizes; {result['iters']} timed calls after {result['warmup']} warm-up (median and "
        "best). Peak memory: one call, process peak resident set (includes the weights).",
        "",
        "| model | params (M) | phase | dtype | attn | batch | s / call | tokens/s (median) | tokens/s (best) | "
        "GFLOP/clip | peak memory (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        memory = "" if r.get("peak_memory_gb") is None else f"{r['peak_memory_gb']:.2f}"
        flops = f"{r['gflop_per_clip']:.0f}" if "gflop_per_clip" in r else ""
        lines.append(
            f"| {r['model']} | {r['params_m']} | {r['phase']} | {r['dtype']} | {r['attn']} | {r['batch_size']} | "
            f"{r['seconds']:.2f} | {r['tokens_per_s']:.3g} | {r['best_tokens_per_s']:.3g} | {flops} | {memory} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"], choices=sorted(DTYPES),
                        help="tokenizer dtypes (none: skip the tokenizer)")
    parser.add_argument("--attn", nargs="+", default=["sdpa"], choices=["sdpa", "eager"])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="also measure the peak memory of one call")
    parser.add_argument("--ar-tokens", type=int, default=0, help="also time generating this many codes")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--output", default=None, help="JSON results file")
    parser.add_argument("--markdown", default=None, help="markdown table file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [row for dtype in args.dtypes for attn in args.attn for row in bench_tokenizer(args, dtype, attn)]
    if args.ar_tokens:
        rows += bench_generator(args)
    result = dict(device=args.device, cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                  torch=torch.__version__, warmup=args.warmup, iters=args.iters, rows=rows)
    command = "python benchmarks/bench_larp.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_results(result, args.output, args.markdown, lambda: to_markdown(result, command.strip()))
    return result


if __name__ == "__main__":
    main()
