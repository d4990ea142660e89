"""LARP tokenizer and generator throughput at the released sizes (random weights; not a test).

Tokenizer (`LARPConfig.from_variant("larp_l_long")`, 16x128x128 clips, 1024 tokens): times `encode` (clips -> ids)
and `decode` (ids -> clips) and reports clips/s, tokens/s, GFLOP per clip and the peak memory of one call.
Generator (`LARPARConfig.from_variant("larp_l_long_ar")`, optional with `--ar-tokens N`): times `generate` of N codes
(greedy, KV cache, with and without classifier-free guidance) and reports codes/s.

    python benchmarks/bench_larp.py --markdown benchmarks/results/larp_cpu.md

With `--reference PATH` (a checkout of hywang66/LARP with timm < 1.0.16, einops and easydict; its training-only
imports `lpips` and `utils` are stubbed when missing) it instead times the original `LARPTokenizer` against vistok
side by side (see `bench_reference.py`): built from the checkout's `cfgs/larp_tokenizer.yaml` at the released
LARP-L-long size (16x128x128 clips, 1024 tokens, codebook 8192, gptc-S prior) with random weights, in eval with
deterministic VQ, saved with `save_pretrained` (the hub layout of hywang66/LARP-L-long-tokenizer) and converted with
`vistok-convert larp`. Ops: `encode` (clip -> codes, which must be identical), `decode` (codes -> clip) and `prior`
(teacher-forced logits of the prior over the codebook). `--reference-size reduced`: 384 wide, 6 heads, 4 layers,
gptc-XXS prior, same clips and codebook.

    python benchmarks/bench_larp.py --reference ../LARP --markdown benchmarks/results/reference_larp_released_cpu.md
"""

import argparse
import copy
import json
import platform
import statistics
import sys
from pathlib import Path

import bench_reference
import torch
from bench_common import DTYPES, count_flops, peak_memory_gb, time_calls, write_results

from vistok import LARP_VARIANTS, LARPARConfig, LARPARForCausalLM, LARPConfig, LARPModel


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


# `--reference-size reduced`: narrower and shallower ViTs and the smallest registered prior, the released clips
REDUCED_ARGS = dict(encoder_hidden_size=384, decoder_hidden_size=384, encoder_num_heads=6, decoder_num_heads=6,
                    encoder_depth=4, decoder_depth=4)


def original_config(reference: str, size: str) -> dict:
    """`LARPTokenizer` arguments of the release: `model.args` of the checkout's `cfgs/larp_tokenizer.yaml` with its
    `$input_size$` / `$frame_num$` placeholders set as `scripts/train_larp_tokenizer_reproduce.sh` sets them for
    LARP-L-long (the script's other overrides repeat the yaml's values)."""
    import yaml

    kwargs = yaml.safe_load((Path(reference) / "cfgs" / "larp_tokenizer.yaml").read_text())["model"]["args"]
    released = LARP_VARIANTS["larp_l_long"]
    kwargs.update(input_size=released["image_size"], frame_num=released["num_frames"])
    if size == "reduced":
        kwargs.update(REDUCED_ARGS)
        kwargs["prior_model"]["name"] = "gptc-XXS"
    return kwargs


def spread_codes(original, clips: torch.Tensor, draws: int = 16) -> tuple[float, int]:
    """Makes the original's random weights give codes that vary with the token and the clip, and argmaxes that float
    rounding cannot flip. With the original's init every holistic query (~ N(0, 0.02)) reads nearly the same average
    of the clip, so most tokens share a few codes, and the zero-initialised pixel head decodes every code to 0.
    Here the queries are drawn from N(0, 1), the encoder's qkv weights are scaled by 3 (sharper attention), the pixel
    head is drawn like the other linears (Xavier), and the codebook is the one of `draws` Kaiming draws (the
    original's init) with the largest cosine margin between the best and second-best code of every token of `clips`
    ([B, C, T, H, W]). Returns that margin and the number of distinct codes."""
    from torch import nn

    quantizer = original.bottleneck.regularizer
    with torch.no_grad():
        original.encoder_latent_query_embed.normal_()
        for name, parameter in original.encoder.named_parameters():
            if name.endswith("attn.qkv.weight"):
                parameter.mul_(3)
        nn.init.xavier_uniform_(original.final_layer.linear.weight)
        directions = nn.functional.normalize(original.encode(clips)["projected_z"].flatten(0, 1), dim=-1)
        best = None
        for draw in range(draws):
            codebook = nn.init.kaiming_uniform_(torch.empty(quantizer.embedding.weight.shape),
                                                generator=torch.Generator().manual_seed(draw))
            codebook = codebook.to(directions.device)
            top2 = (directions @ nn.functional.normalize(codebook, dim=-1).t()).topk(2)
            margin = float((top2.values[:, 0] - top2.values[:, 1]).min())
            if best is None or margin > best[0]:
                best = (margin, codebook, top2.indices[:, 0].unique().numel())
        quantizer.embedding.weight.copy_(best[1])
    return best[0], best[2]


def _check_timm() -> None:
    import timm
    from packaging.version import Version

    if Version(timm.__version__) >= Version("1.0.16"):
        print(f"warning: timm {timm.__version__} builds the original's ViT blocks with LayerNorm eps 1e-6 (LARP was "
              "trained with timm < 1.0.16, eps 1e-5, which vistok keeps): outputs will differ by ~1e-3 and codes may "
              "differ; install timm==1.0.12", file=sys.stderr)


def reference_pairs(args, workdir: Path):
    """The original `LARPTokenizer` (random weights, see `spread_codes`) saved with `save_pretrained` and converted."""
    tokenizer = bench_reference.import_original(
        args.reference, "models.larp_tokenizer", training_only=("lpips", "utils")
    )
    _check_timm()
    from vistok.conversion.__main__ import main as convert_main

    kwargs = original_config(args.reference, args.reference_size)
    torch.manual_seed(0)
    original = tokenizer.LARPTokenizer(**copy.deepcopy(kwargs)).eval()  # it edits its nested dicts
    original.set_vq_eval_deterministic(True)
    for module in original.modules():  # the prior passes its attention dropout to SDPA even in eval
        if hasattr(module, "p_attn_drop"):
            module.p_attn_drop = 0.0
    generator = torch.Generator().manual_seed(0)
    size, frames = kwargs["input_size"], kwargs["frame_num"]
    clips = torch.rand(max(args.reference_batch_sizes), frames, 3, size, size, generator=generator).to(args.device)
    their_clips = clips.transpose(1, 2).contiguous()  # the original's [B, C, T, H, W]; vistok's is [B, T, C, H, W]
    margin, distinct = spread_codes(original.to(args.device), their_clips)
    original.cpu().save_pretrained(workdir / "original", config=kwargs)
    assert convert_main(["larp", str(workdir / "original"), str(workdir / "vistok")]) == 0
    ours = LARPModel.from_pretrained(workdir / "vistok").eval().to(args.device)
    original = original.to(args.device)

    def encode(batch_size):
        x, theirs = clips[:batch_size], their_clips[:batch_size]
        return lambda: ours.encode(x).tokens, lambda: original.encode(theirs)["bottleneck_rep"]

    def decode(batch_size):
        with torch.no_grad():
            tokens = ours.encode(clips[:batch_size]).tokens
        # the original returns [B, C, T, H, W]: compared as a [B, T, C, H, W] view
        return (lambda: ours.decode(tokens).reconstruction,
                lambda: original.decode_from_bottleneck(tokens).transpose(1, 2))

    def prior(batch_size):
        with torch.no_grad():
            latents = ours.encode(clips[:batch_size]).latents
        return (lambda: ours.prior_logits(latents),
                lambda: original.calculate_logits_and_ar_pred_cont(original.prior_model.ar_predict(latents))[0])

    described = (f"original `LARPTokenizer` from cfgs/larp_tokenizer.yaml at LARP-L-long's {args.reference_size} size "
                 f"({frames}x{size}x{size} clips, {kwargs['bottleneck_token_num']} tokens, prior "
                 f"{kwargs['prior_model']['name']}; {distinct} distinct codes in {max(args.reference_batch_sizes)} "
                 f"clips, min top-2 cosine margin {margin:.1e})")
    return described, {"encode": encode, "decode": decode, "prior": prior}


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
    bench_reference.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/bench_larp.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.reference:
        return bench_reference.main("LARP", reference_pairs, args, command.strip())
    rows = [row for dtype in args.dtypes for attn in args.attn for row in bench_tokenizer(args, dtype, attn)]
    if args.ar_tokens:
        rows += bench_generator(args)
    result = dict(device=args.device, cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                  torch=torch.__version__, warmup=args.warmup, iters=args.iters, rows=rows)
    write_results(result, args.output, args.markdown, lambda: to_markdown(result, command.strip()))
    return result


if __name__ == "__main__":
    main()
