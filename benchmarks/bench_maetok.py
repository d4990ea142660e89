"""MAETok encode/decode throughput at the released sizes (random weights; not a test).

For each variant of `MAETOK_VARIANTS` it builds the model, then times `encode` (images -> [B, 128, 32] latents) and
`decode` (latents -> images) with a few iterations and reports images/s, the median seconds per call and the FLOPs
per image counted with `torch.utils.flop_counter`.

    python benchmarks/bench_maetok.py --markdown benchmarks/results/maetok_cpu.md

With `--reference PATH` (a checkout of Hhhhhhao/continuous_tokenizer) it instead times the original `AEModel` (the
class the released checkpoints load with; MAETok-B-128 settings, random weights) against vistok side by side (see
`bench_reference.py`); `--reference-size reduced` uses ViT-S encoder and decoder.
"""

import argparse
import json
import platform
import statistics
import sys

import torch
import bench_reference
from bench_common import DTYPES, count_flops, time_calls, write_results

from vistok import MAETOK_VARIANTS, MAETokConfig, MAETokModel


def build_model(variant: str, dtype: torch.dtype, attn: str, device: str) -> MAETokModel:
    config = MAETokConfig.from_variant(variant)
    config._attn_implementation = attn
    torch.manual_seed(0)
    return MAETokModel(config).eval().to(device=device, dtype=dtype)


# `ModelArgs` of the released MAETok-B-128 (AEModel, 256 px, 128 tokens x 32, mixed RoPE, MoVQ decoder)
MAETOK_B_128_ARGS = dict(
    enc_type="vit", dec_type="vit", encoder_model="vit_base_patch14_dinov2.lvd142m",
    decoder_model="vit_base_patch14_dinov2_movqv2", image_size=256, base_image_size=256, enc_patch_size=16,
    dec_patch_size=16, num_latent_tokens=128, codebook_embed_dim=32, enc_pretrained=False, dec_pretrained=False,
    enc_token_drop=0.4, enc_token_drop_max=0.6, dec_cls_token=False, use_ape=False, use_rope=True, rope_mixed=True,
    rope_theta=10.0, to_pixel="linear", repa=False, vq_mean=0.0, vq_std=1.0,
)


def reference_pairs(args, workdir):
    """The original AEModel (random weights, its own init) saved with `save_pretrained` and converted to vistok."""
    tokenizer = bench_reference.import_original(args.reference, "modelling.tokenizer")

    from vistok.conversion.__main__ import main as convert_main

    fields = dict(MAETOK_B_128_ARGS)
    if args.reference_size == "reduced":
        fields.update(encoder_model="vit_small_patch14_dinov2.lvd142m", decoder_model="vit_small_patch14_dinov2_movqv2")
    torch.manual_seed(0)
    original = tokenizer.AEModel(tokenizer.ModelArgs(**fields)).eval().to(args.device)
    original.save_pretrained(workdir / "original")
    # the timm preset names of the reduced run are not released presets: give their sizes
    presets = workdir / "presets.json"
    presets.write_text('{"vit_small_patch14_dinov2.lvd142m": {"hidden_size": 384, "num_hidden_layers": 12, '
                       '"num_attention_heads": 6}, "vit_small_patch14_dinov2_movqv2": {"hidden_size": 384, '
                       '"num_hidden_layers": 12, "num_attention_heads": 6}}')
    convert_args = ["maetok", str(workdir / "original"), str(workdir / "vistok"), "--preset-overrides", str(presets)]
    assert convert_main(convert_args) == 0
    ours = MAETokModel.from_pretrained(workdir / "vistok").eval().to(args.device)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(max(args.reference_batch_sizes), 3, 256, 256, generator=generator).to(args.device) * 2 - 1

    def encode(batch_size):
        x = images[:batch_size]
        return lambda: ours.encode(x).latents, lambda: original.encode(x)[0]

    def decode(batch_size):
        with torch.no_grad():
            latents = ours.encode(images[:batch_size]).latents
        return lambda: ours.decode(latents).reconstruction, lambda: original.decode(latents)

    return f"original `AEModel` with MAETok-B-128 settings ({args.reference_size} size)", {"encode": encode, "decode": decode}


def run(args) -> dict:
    rows = []
    for variant in args.variants:
        model = build_model(variant, DTYPES[args.dtype], args.attn, args.device)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        size = model.config.image_size
        pixel_values = torch.rand(args.batch_size, 3, size, size, device=args.device) * 2 - 1
        pixel_values = pixel_values.to(DTYPES[args.dtype])
        with torch.no_grad():
            latents = model.encode(pixel_values).latents
        phases = {"encode": lambda: model.encode(pixel_values), "decode": lambda: model.decode(latents)}
        for phase, fn in phases.items():
            flops = count_flops(fn)
            times = time_calls(fn, args.warmup, args.iters, args.device)
            seconds, best = statistics.median(times), min(times)
            row = dict(variant=variant, image_size=size, params_m=round(params, 2), phase=phase, dtype=args.dtype,
                       attn=args.attn, batch_size=args.batch_size, seconds=seconds, best_seconds=best,
                       images_per_s=args.batch_size / seconds, best_images_per_s=args.batch_size / best,
                       gflop_per_image=flops / args.batch_size / 1e9)
            rows.append(row)
            print(json.dumps(row), flush=True)
        del model
    return dict(device=args.device, cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                torch=torch.__version__, warmup=args.warmup, iters=args.iters, rows=rows)


def to_markdown(result: dict, command: str) -> str:
    lines = [
        "# MAETok benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"Device: {result['device']} ({result['cpu']}, {result['threads']} threads), torch {result['torch']}; random "
        f"weights at the released sizes; {result['iters']} timed calls after {result['warmup']} warm-up (median and "
        "best; on a machine shared with other jobs the best call is the steadier figure).",
        "",
        "| variant | image | params (M) | phase | dtype | attn | batch | s / call (median) | images/s (median) | "
        "images/s (best) | GFLOP/image |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['variant']} | {r['image_size']} | {r['params_m']:.1f} | {r['phase']} | {r['dtype']} | {r['attn']} | "
            f"{r['batch_size']} | {r['seconds']:.2f} | {r['images_per_s']:.2f} | {r['best_images_per_s']:.2f} | "
            f"{r['gflop_per_image']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(MAETOK_VARIANTS), choices=list(MAETOK_VARIANTS))
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--output", default=None, help="JSON results file")
    parser.add_argument("--markdown", default=None, help="markdown table file")
    bench_reference.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reference:
        command = "python benchmarks/bench_maetok.py " + " ".join(sys.argv[1:] if argv is None else argv)
        return bench_reference.main("MAETok", reference_pairs, args, command)
    result = run(args)
    command = "python benchmarks/bench_maetok.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_results(result, args.output, args.markdown, lambda: to_markdown(result, command.strip()))
    return result


if __name__ == "__main__":
    main()
