"""FlexTok encode/decode timings at the released sizes (random weights; not a test).

For each variant it builds the model (256x256 images, c16 VAE, 256 registers) and times:
  * `encode`: VAE encoder + FlexTok encoder + FSQ, images -> 256 token ids;
  * `decoder step`: one rectified-flow velocity prediction (`predict_velocity`, the unit a decode repeats);
  * `vae decode`: latents -> pixels (once per decode);
  * `decode`: `decode(tokens[:, :k], num_steps=S, ...)`, the whole sampler + VAE decode.
For the first variant it also sweeps the number of kept tokens k (the decoder always attends over all 256 register
slots, masked ones included, so k should not change the cost) and the number of Euler steps S, with and without
guidance (guidance doubles the batch of every step). Reports the median seconds per call and the FLOPs per image
counted with `torch.utils.flop_counter`.

    python benchmarks/bench_flextok.py --markdown benchmarks/results/flextok_cpu.md

With `--reference PATH` (a checkout of apple/ml-flextok) and `--reference-checkpoint DIR` (an original checkpoint
folder: config.json + model.safetensors, e.g. a snapshot of EPFL-VILAB/flextok_d12_d12_in1k with its VAE, whose
config names the VAE by `vae.hf_hub_path`) it instead times the original `FlexTokFromHub` against its vistok
conversion side by side (see `bench_reference.py`): `tokenize` vs `encode`, and `detokenize` vs `decode` with
`--steps` Euler steps and APG at `--guidance-scale`, from the same generator seed. The original runs with its SDPA
fallback (flex_attention needs a torch.compile warm-up of minutes on CPU).
"""

import argparse
import gc
import json
import platform
import sys

import os
from pathlib import Path

import torch
import bench_reference
from bench_common import DTYPES, count_flops, median_seconds, write_results

from vistok import FLEXTOK_VARIANTS, FlexTokConfig, FlexTokModel
from vistok.modeling.configuration_flextok import FLEXTOK_VAE_BASE_CONFIG


# d18_d28_dfn has the architecture of d18_d28_in1k (only the training data differ)
DEFAULT_VARIANTS = ["flextok_d12_d12_in1k", "flextok_d18_d18_in1k", "flextok_d18_d28_in1k"]


def build_model(variant: str, dtype: torch.dtype, attn: str, device: str) -> FlexTokModel:
    config = FlexTokConfig.from_variant(variant)
    config._attn_implementation = attn
    torch.manual_seed(0)
    return FlexTokModel(config).eval().to(device=device, dtype=dtype)


def decode_fn(model, tokens, noise, num_tokens, num_steps, guidance_scale):
    return lambda: model.decode(
        tokens[:, :num_tokens], num_steps=num_steps, guidance_scale=guidance_scale, guidance_type="apg", noise=noise
    )


def run(args) -> dict:
    rows = []
    dtype = DTYPES[args.dtype]

    def record(variant, params, phase, fn, tokens_kept=None, steps=None, guidance=None, gflop=None, iters=None):
        """Times `fn`; counts its FLOPs unless `gflop` (per image) is given."""
        if gflop is None:
            gflop = count_flops(fn) / args.batch_size / 1e9
        seconds = median_seconds(fn, args.warmup, iters or args.iters, args.device)
        row = dict(variant=variant, params_m=round(params, 1), phase=phase, tokens=tokens_kept, steps=steps,
                   guidance=guidance, dtype=args.dtype, batch_size=args.batch_size, seconds=seconds,
                   images_per_s=args.batch_size / seconds, gflop_per_image=gflop)
        rows.append(row)
        print(json.dumps(row), flush=True)

    for index, variant in enumerate(args.variants):
        model = build_model(variant, dtype, args.attn, args.device)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        size = model.config.image_size
        generator = torch.Generator().manual_seed(0)
        pixel_values = (torch.rand(args.batch_size, 3, size, size, generator=generator) * 2 - 1).to(args.device, dtype)
        with torch.no_grad():
            encoded = model.encode(pixel_values)
        tokens = encoded.tokens
        noise = torch.randn(encoded.vae_latents.shape, generator=generator).to(args.device)
        record(variant, params, "encode", lambda: model.encode(pixel_values), tokens_kept=256)
        record(variant, params, "decoder step", lambda: model.predict_velocity(encoded.latents, noise, 1.0),
               tokens_kept=256, steps=1, guidance=1.0)
        record(variant, params, "vae decode", lambda: model.vae_decode(noise))
        step_gflop, vae_gflop = rows[-2]["gflop_per_image"], rows[-1]["gflop_per_image"]

        def decode_gflop(steps, guidance):
            # a decode is `steps` decoder passes (twice as many with guidance) and one VAE decode
            return steps * (1 if guidance == 1.0 else 2) * step_gflop + vae_gflop

        record(variant, params, "decode", decode_fn(model, tokens, noise, 256, args.steps, 1.0), tokens_kept=256,
               steps=args.steps, guidance=1.0, gflop=decode_gflop(args.steps, 1.0))
        if index == 0 and not args.no_sweep:
            for num_tokens in args.sweep_tokens:
                fn = decode_fn(model, tokens, noise, num_tokens, args.steps, 1.0)
                record(variant, params, "decode vs tokens", fn, tokens_kept=num_tokens, steps=args.steps, guidance=1.0,
                       gflop=decode_gflop(args.steps, 1.0))
            for guidance in (1.0, args.guidance_scale):
                for steps in args.sweep_steps:
                    record(variant, params, "decode vs steps", decode_fn(model, tokens, noise, 256, steps, guidance),
                           tokens_kept=256, steps=steps, guidance=guidance, gflop=decode_gflop(steps, guidance))
        del model, encoded
        gc.collect()
    return dict(device=args.device, cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                torch=torch.__version__, warmup=args.warmup, iters=args.iters, rows=rows)


def _resize_module_config(node, width: int, depth: int, settings: dict):
    """Copy of one part of an original FlexTok config (Hydra dicts) with every size field set to a released size:
    `dim` -> width, `depth`, `head_dim`, the FSQ width (`dim_in`/`dim_out`), the VAE channels, posemb tables and
    register counts; everything else (module names, order, data-dict keys) is kept."""
    if isinstance(node, list):
        return [_resize_module_config(item, width, depth, settings) for item in node]
    if not isinstance(node, dict):
        return node
    sizes = {"dim": width, "depth": depth, "head_dim": 64, "dim_in": settings["fsq_dim"],
             "dim_out": settings["fsq_dim"], "channels_in": settings["vae_channels"],
             "channels_out": settings["vae_channels"], "out_channels": settings["vae_channels"],
             "latent_channels": settings["vae_channels"], "levels": settings["fsq_levels"],
             "n_min": 1, "n_max": settings["registers"]}
    resized = {}
    for key, value in node.items():
        if key == "max_sizes":  # 2D patch posemb tables or the 1D register posemb table
            value = [settings["patches"]] * 2 if len(value) == 2 else [settings["registers"]]
        elif key in sizes:
            value = sizes[key]
        resized[key] = _resize_module_config(value, width, depth, settings)
    return resized


def released_reference_checkpoint(args, workdir: Path, wrapper) -> Path:
    """Builds the original FlexTok at the size of `--reference-variant` from the module layout of the
    `--reference-checkpoint` config (e.g. the tiny parity checkpoint), with random weights (layers the original
    zero-initializes are drawn from N(0, 0.02) so that tokens and velocities are not trivial), and writes it in the
    released layout: config.json (module order kept), model.safetensors (whole state dict, config in the metadata)
    and the diffusers VAE folder `vae/`."""
    from safetensors.torch import save_file

    template = json.loads((Path(args.reference_checkpoint) / "config.json").read_text())
    released = FLEXTOK_VARIANTS[args.reference_variant]
    config = FlexTokConfig()  # release defaults: 256 px, c16 VAE, patch 2, 256 registers, FSQ levels
    settings = dict(fsq_dim=len(config.fsq_levels), fsq_levels=list(config.fsq_levels), registers=config.num_latent_tokens,
                    vae_channels=FLEXTOK_VAE_BASE_CONFIG["latent_channels"],
                    patches=config.image_size // 8 // config.patch_size)
    resized = dict(template)
    for part in ("encoder", "decoder"):
        depth = released[f"{part}_depth"]
        resized[part] = _resize_module_config(template[part], 64 * depth, depth, settings)
    for part in ("regularizer", "pipeline"):
        resized[part] = _resize_module_config(template[part], 0, 0, settings)
    resized["vae"] = dict(template["vae"], latent_channels=settings["vae_channels"],
                          scaling_factor=config.vae_scaling_factor, hf_hub_path=None)  # VAE_BASE_CFG, random
    torch.manual_seed(0)
    original = wrapper.FlexTokFromHub({k: v for k, v in resized.items() if k != "_target_"})
    with torch.no_grad():
        for parameter in original.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.02)
    folder = workdir / "original"
    original.vae.vae.save_pretrained(folder / "vae")
    resized["vae"]["hf_hub_path"] = "vae"
    (folder / "config.json").write_text(json.dumps(resized, indent=2))
    metadata = {key: str(value) for key, value in resized.items()}
    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, folder / "model.safetensors", metadata)
    del original
    gc.collect()
    return folder


def reference_pairs(args, workdir):
    """The original FlexTok loaded from `--reference-checkpoint` (or built at `--reference-variant`'s size) and its
    vistok conversion."""
    if not args.reference_checkpoint:
        raise SystemExit("--reference needs --reference-checkpoint DIR (an original FlexTok checkpoint folder)")
    wrapper = bench_reference.import_original(args.reference, "flextok.flextok_wrapper")
    from safetensors.torch import load_file

    from vistok.conversion.__main__ import main as convert_main

    source = Path(args.reference_checkpoint).resolve()
    if args.reference_variant:
        source = released_reference_checkpoint(args, workdir, wrapper)
    config = json.loads((source / "config.json").read_text())
    config = {key: value for key, value in config.items() if key != "_target_"}
    cwd = os.getcwd()
    os.chdir(source)  # a relative vae.hf_hub_path names a folder next to config.json
    try:
        original = wrapper.FlexTokFromHub(config)
    finally:
        os.chdir(cwd)
    original.load_state_dict(load_file(source / "model.safetensors"))
    for module in original.modules():  # the original's SDPA fallback
        if hasattr(module, "use_flex_attention"):
            module.use_flex_attention = False
        if hasattr(module, "return_materialized_mask"):
            module.return_materialized_mask = True
    original = original.eval().to(args.device)
    assert convert_main(["flextok", str(source), str(workdir / "vistok")]) == 0
    ours = FlexTokModel.from_pretrained(workdir / "vistok").eval().to(args.device)
    size, factor = ours.config.image_size, ours.config.vae_downsample_factor
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(max(args.reference_batch_sizes), 3, size, size, generator=generator).to(args.device) * 2 - 1
    apg = dict(num_steps=args.steps, guidance_scale=args.guidance_scale, guidance_type="apg")

    def encode(batch_size):
        x = images[:batch_size]
        return lambda: ours.encode(x).tokens, lambda: torch.cat(original.tokenize(x))

    def decode(batch_size):
        with torch.no_grad():
            tokens = ours.encode(images[:batch_size]).tokens
        def theirs():
            return original.detokenize(
                list(tokens.split(1)), vae_image_sizes=size // factor, timesteps=args.steps, verbose=False,
                generator=torch.Generator(args.device).manual_seed(0), guidance_scale=args.guidance_scale,
                perform_norm_guidance=True,
            )
        def mine():
            return ours.decode(tokens, generator=torch.Generator(args.device).manual_seed(0), **apg).reconstruction
        return mine, theirs

    described = (f"original `FlexTokFromHub` from {source.name} ({size} px; decode: {args.steps} Euler steps, APG "
                 f"{args.guidance_scale})")
    return described, {"encode": encode, "decode": decode}


def _cell(value, fmt="{}"):
    return "" if value is None else fmt.format(value)


def to_markdown(result: dict, command: str) -> str:
    lines = [
        "# FlexTok benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"Device: {result['device']} ({result['cpu']}, {result['threads']} threads), torch {result['torch']}; random "
        f"weights at the released sizes (256x256 images, c16 VAE, 256 registers, FSQ 64k); median of "
        f"{result['iters']} timed calls after {result['warmup']} warm-up. Guided decodes use APG; guidance 1.0 runs "
        "no unconditional branch. FLOPs of the encode, decoder-step and VAE rows are counted with "
        "`torch.utils.flop_counter`; those of whole decodes are derived (steps x decoder step, x2 with guidance, + VAE "
        "decode).",
        "",
        "| variant | params (M) | phase | tokens k | steps | guidance | dtype | batch | s / call | images/s "
        "| GFLOP/image |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['variant']} | {r['params_m']:.1f} | {r['phase']} | {_cell(r['tokens'])} | {_cell(r['steps'])} | "
            f"{_cell(r['guidance'])} | {r['dtype']} | {r['batch_size']} | {r['seconds']:.2f} | "
            f"{r['images_per_s']:.3f} | {_cell(r['gflop_per_image'], '{:.1f}')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(FLEXTOK_VARIANTS))
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="Euler steps of the `decode` rows and the token sweep")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="guided rows of the step sweep (APG)")
    parser.add_argument("--sweep-tokens", type=int, nargs="+", default=[1, 16, 256])
    parser.add_argument("--sweep-steps", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--no-sweep", action="store_true", help="skip the token / step sweeps")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--output", default=None, help="JSON results file")
    parser.add_argument("--markdown", default=None, help="markdown table file")
    bench_reference.add_arguments(parser)
    parser.add_argument("--reference-checkpoint", default=None, metavar="DIR",
                        help="original FlexTok checkpoint folder to compare (--reference)")
    parser.add_argument("--reference-variant", default=None, choices=list(FLEXTOK_VARIANTS),
                        help="build the original at this released size (random weights) from the module layout of "
                             "--reference-checkpoint's config instead of loading that checkpoint")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reference:
        command = "python benchmarks/bench_flextok.py " + " ".join(sys.argv[1:] if argv is None else argv)
        return bench_reference.main("FlexTok", reference_pairs, args, command)
    result = run(args)
    command = "python benchmarks/bench_flextok.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_results(result, args.output, args.markdown, lambda: to_markdown(result, command.strip()))
    return result


if __name__ == "__main__":
    main()
