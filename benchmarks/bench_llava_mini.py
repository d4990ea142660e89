"""LLaVA-Mini vs a LLaVA-1.5-style model with the same LLM: prefill FLOPs, prefill latency and KV-cache memory per
image, all measured in one run (random weights; not a test).

The baseline is transformers' `LlavaForConditionalGeneration` (576 vision tokens for a 336 px CLIP with 14 px
patches); LLaVA-Mini uses the same CLIP tower geometry and LLM, plus its compressor and pre-fusion layers, at 1 and at
9 vision tokens (compressor grid C = 1 and 3). Both models see one image and the same text prompt. The sizes default
to a small model that runs on a CPU; `--preset llama3-8b` builds the release geometry (needs ~40 GB of memory).
FLOPs are counted with eager attention (the CPU sdpa flash kernel counts as zero).

    python benchmarks/bench_llava_mini.py --markdown benchmarks/results/llava_mini_cpu.md
"""

import argparse
import json
import platform
import sys

import torch
from bench_common import count_flops, median_seconds, write_results
from transformers import LlavaConfig, LlavaForConditionalGeneration
from vistok import LlavaMiniConfig, LlavaMiniForConditionalGeneration

PRESETS = {
    # a small stand-in with the release's proportions: 336 px / 14 px CLIP geometry (576 patches), a narrow 32-layer
    # LLM with grouped KV heads, 4 pre-fusion layers
    "small": {
        "vision": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=4,
                       image_size=336, patch_size=14),
        "text": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=32, num_attention_heads=6,
                     num_key_value_heads=2, vocab_size=32000),
        "prefusion": 4,
    },
    # the release: CLIP ViT-L/14-336 + Llama-3.1-8B, 4 pre-fusion layers
    "llama3-8b": {
        "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=336, patch_size=14),
        "text": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
        "prefusion": 4,
    },
}

# LLMs of the paper's comparison, for the KV-cache formula: (layers, kv heads, head dim)
KV_GEOMETRIES = {"Vicuna-7B (LLaVA-1.5)": (32, 32, 128), "Llama-3.1-8B (LLaVA-Mini release)": (32, 8, 128)}


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, bytes_per_value: int = 2) -> int:
    return 2 * layers * kv_heads * head_dim * bytes_per_value  # keys and values


def build(kind: str, preset: dict, grid: int | None, dtype, attn: str):
    torch.manual_seed(0)
    vision = dict(preset["vision"], hidden_act="quick_gelu")
    if kind == "llava":
        config = LlavaConfig(vision_config=dict(vision, model_type="clip_vision_model"),
                             text_config=dict(preset["text"], model_type="llama"), image_token_id=0,
                             image_seq_length=(vision["image_size"] // vision["patch_size"]) ** 2)
        model = LlavaForConditionalGeneration(config)
    else:
        config = LlavaMiniConfig(vision_config=vision, text_config=preset["text"], compressor_grid_size=grid,
                                 num_prefusion_layers=preset["prefusion"], image_token_id=0, video_token_id=1)
        model = LlavaMiniForConditionalGeneration(config)
    model.set_attn_implementation(attn)
    return model.eval().to(dtype)


def inputs_for(kind: str, model, num_text: int, generator) -> dict:
    vision = model.config.vision_config
    num_vision = (vision.image_size // vision.patch_size) ** 2 if kind == "llava" else model.config.num_vision_tokens
    text = torch.randint(2, 1000, (1, num_text), generator=generator)
    ids = torch.cat([text[:, :5], torch.zeros(1, num_vision, dtype=torch.long), text[:, 5:]], dim=1)
    pixels = torch.randn(1, 3, vision.image_size, vision.image_size, generator=generator).to(model.dtype)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}, num_vision


def cache_bytes(cache) -> int:
    total = 0
    for layer in cache.layers:
        total += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
    return total


def measure(name: str, kind: str, grid: int | None, preset: dict, dtype, args) -> dict:
    """FLOPs (eager attention), KV cache and latency (``args.attn``) of one prefill with one image."""
    model = build(kind, preset, grid, dtype, "eager")
    inputs, num_vision = inputs_for(kind, model, args.text_tokens, torch.Generator().manual_seed(0))
    image_kwargs = {} if kind == "llava" else {"input_ids": inputs["input_ids"]}

    def prefill():
        return model(**inputs, use_cache=True, logits_to_keep=1)

    flops = count_flops(prefill)
    vision_flops = count_flops(lambda: model.model.get_image_features(inputs["pixel_values"], **image_kwargs))
    with torch.no_grad():
        total_cache = cache_bytes(prefill().cache)
    seq = inputs["input_ids"].shape[1]
    model.set_attn_implementation(args.attn)
    seconds = median_seconds(prefill, args.warmup, args.iters, "cpu")
    return {
        "model": name, "vision_tokens": num_vision, "llm_sequence": seq,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "prefill_GFLOPs": round(flops / 1e9, 2), "vision_side_GFLOPs": round(vision_flops / 1e9, 2),
        "prefill_ms": round(seconds * 1e3, 1), "kv_cache_MiB": round(total_cache / 2**20, 3),
        # every cached token takes the same room
        "vision_kv_MiB": round(total_cache * num_vision / seq / 2**20, 3),
    }


def run(args) -> dict:
    preset, dtype = PRESETS[args.preset], getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    rows = [
        measure(name, kind, grid, preset, dtype, args)
        for name, kind, grid in (("LLaVA-1.5 style (576 tokens)", "llava", None),
                                 ("LLaVA-Mini C=1 (1 token)", "mini", 1), ("LLaVA-Mini C=3 (9 tokens)", "mini", 3))
    ]
    base = rows[0]
    for row in rows:
        row["flops_vs_baseline"] = round(row["prefill_GFLOPs"] / base["prefill_GFLOPs"], 3)
        row["latency_vs_baseline"] = round(row["prefill_ms"] / base["prefill_ms"], 3)
    formula = {
        llm: {tokens: round(tokens * kv_bytes_per_token(*geometry) / 2**20, 3) for tokens in (576, 9, 1)}
        for llm, geometry in KV_GEOMETRIES.items()
    }
    return {
        "preset": args.preset, "dtype": args.dtype, "attention_for_latency": args.attn, "threads": args.threads,
        "text_tokens": args.text_tokens, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "rows": rows, "vision_kv_MiB_per_image_bf16_formula": formula,
    }


def markdown(result: dict) -> str:
    lines = [
        (f"# LLaVA-Mini vs LLaVA-1.5-style prefill ({result['preset']} preset, {result['dtype']}, "
         f"{result['threads']} CPU thread(s), {result['text_tokens']} text tokens, one image)"),
        "",
        ("| model | vision tokens | LLM sequence | params (M) | prefill GFLOPs | of which vision side | "
         "x baseline FLOPs | prefill ms | x baseline latency | KV cache MiB | vision part of KV MiB |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['vision_tokens']} | {r['llm_sequence']} | {r['params_M']} | {r['prefill_GFLOPs']} | "
            f"{r['vision_side_GFLOPs']} | {r['flops_vs_baseline']} | {r['prefill_ms']} | {r['latency_vs_baseline']} | "
            f"{r['kv_cache_MiB']} | {r['vision_kv_MiB']} |"
        )
    lines += ["", ("Vision KV cache per image at the real LLM sizes (bf16, 2 x layers x kv_heads x head_dim x 2 bytes "
                   "per token):"), "", "| LLM | 576 tokens | 9 tokens | 1 token |", "|---|---|---|---|"]
    for llm, values in result["vision_kv_MiB_per_image_bf16_formula"].items():
        lines.append(f"| {llm} | {values[576]} MiB | {values[9]} MiB | {values[1]} MiB |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention used for the latency")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--output", default=None, help="write the results as JSON")
    parser.add_argument("--markdown", default=None, help="write the results as a markdown table")
    args = parser.parse_args(argv)
    result = run(args)
    write_results(result, args.output, args.markdown, lambda: markdown(result))
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
