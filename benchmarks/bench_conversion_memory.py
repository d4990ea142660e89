"""Peak memory of ``vistok-convert`` on a synthetic sharded release (InternVL2.5 layout, bf16, several shards + index).

    python benchmarks/bench_conversion_memory.py [--hidden 1024] [--layers 24] [--shards 4] [--workdir DIR]

Writes a synthetic ``internvl_chat`` checkpoint (InternViT-300M-style tower, Qwen2 LLM with the real 151674-token
vocabulary), converts it in a child process, and reports the child's peak RSS (``ru_maxrss``) next to the checkpoint
size. Converting shard by shard peaks at about one copy of the weights above the interpreter baseline, not two.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file


def synthetic_state_dict(hidden: int, layers: int, vocab: int, vit_hidden: int = 256, vit_layers: int = 4) -> dict:
    """Original InternVL2.5 key names and shapes, filled with a constant (the memory is touched, values are irrelevant)."""
    def t(*shape):
        return torch.full(shape, 0.01, dtype=torch.bfloat16)

    kv = hidden // 8  # 2 of 16 heads
    state = {
        "vision_model.embeddings.class_embedding": t(1, 1, vit_hidden),
        "vision_model.embeddings.position_embedding": t(1, 1 + 32 * 32, vit_hidden),
        "vision_model.embeddings.patch_embedding.weight": t(vit_hidden, 3, 14, 14),
        "vision_model.embeddings.patch_embedding.bias": t(vit_hidden),
        "mlp1.0.weight": t(4 * vit_hidden), "mlp1.0.bias": t(4 * vit_hidden),
        "mlp1.1.weight": t(hidden, 4 * vit_hidden), "mlp1.1.bias": t(hidden),
        "mlp1.3.weight": t(hidden, hidden), "mlp1.3.bias": t(hidden),
        "language_model.model.embed_tokens.weight": t(vocab, hidden),
        "language_model.model.norm.weight": t(hidden),
        "language_model.lm_head.weight": t(vocab, hidden),
    }
    for i in range(vit_layers):
        p = f"vision_model.encoder.layers.{i}."
        state |= {p + "ls1": t(vit_hidden), p + "ls2": t(vit_hidden), p + "norm1.weight": t(vit_hidden),
                  p + "norm1.bias": t(vit_hidden), p + "norm2.weight": t(vit_hidden), p + "norm2.bias": t(vit_hidden),
                  p + "attn.qkv.weight": t(3 * vit_hidden, vit_hidden), p + "attn.qkv.bias": t(3 * vit_hidden),
                  p + "attn.proj.weight": t(vit_hidden, vit_hidden), p + "attn.proj.bias": t(vit_hidden),
                  p + "mlp.fc1.weight": t(4 * vit_hidden, vit_hidden), p + "mlp.fc1.bias": t(4 * vit_hidden),
                  p + "mlp.fc2.weight": t(vit_hidden, 4 * vit_hidden), p + "mlp.fc2.bias": t(vit_hidden)}
    for i in range(layers):
        p = f"language_model.model.layers.{i}."
        state |= {p + "input_layernorm.weight": t(hidden), p + "post_attention_layernorm.weight": t(hidden),
                  p + "self_attn.q_proj.weight": t(hidden, hidden), p + "self_attn.q_proj.bias": t(hidden),
                  p + "self_attn.k_proj.weight": t(kv, hidden), p + "self_attn.k_proj.bias": t(kv),
                  p + "self_attn.v_proj.weight": t(kv, hidden), p + "self_attn.v_proj.bias": t(kv),
                  p + "self_attn.o_proj.weight": t(hidden, hidden),
                  p + "mlp.gate_proj.weight": t(4 * hidden, hidden), p + "mlp.up_proj.weight": t(4 * hidden, hidden),
                  p + "mlp.down_proj.weight": t(hidden, 4 * hidden)}
    return state


def write_sharded(folder: Path, state: dict, shards: int, hidden: int, layers: int, vocab: int) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(state)
    per_shard = -(-len(keys) // shards)
    weight_map, total = {}, 0
    for index in range(shards):
        chunk = keys[index * per_shard:(index + 1) * per_shard]
        name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in chunk}, str(folder / name))
        weight_map |= dict.fromkeys(chunk, name)
        total += sum(state[k].numel() * state[k].element_size() for k in chunk)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config = {
        "model_type": "internvl_chat", "downsample_ratio": 0.5, "ps_version": "v2", "select_layer": -1,
        "force_image_size": 448, "dynamic_image_size": True, "use_thumbnail": True, "min_dynamic_patch": 1,
        "max_dynamic_patch": 12, "template": "internvl2_5",
        "vision_config": {"num_attention_heads": 4, "norm_type": "layer_norm", "hidden_act": "gelu",
                          "layer_norm_eps": 1e-6},
        "llm_config": {"model_type": "qwen2", "num_attention_heads": 16, "num_key_value_heads": 2,
                       "rope_theta": 1e6, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
                       "bos_token_id": 151643, "eos_token_id": 151645, "vocab_size": vocab},
    }
    (folder / "config.json").write_text(json.dumps(config))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--vocab", type=int, default=151674)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--write-source-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="vistok-convmem-"))
    if args.write_source_only:
        state = synthetic_state_dict(args.hidden, args.layers, args.vocab)
        print(write_sharded(workdir / "source", state, args.shards, args.hidden, args.layers, args.vocab))
        return
    # the source is written by another process: Linux keeps ru_maxrss across fork+exec, so this process must stay small
    written = subprocess.run([sys.executable, __file__, "--write-source-only", "--workdir", str(workdir),
                              "--hidden", str(args.hidden), "--layers", str(args.layers), "--vocab", str(args.vocab),
                              "--shards", str(args.shards)], check=True, capture_output=True, text=True)
    size = int(written.stdout.split()[-1])
    start = time.perf_counter()
    # the conversion runs in its own interpreter, which reports its own peak (the same code path as vistok-convert)
    script = ("import resource, sys; from vistok.conversion.__main__ import main; "
              f"code = main(['internvl2_5', {str(workdir / 'source')!r}, {str(workdir / 'dest')!r}, '--force']); "
              "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024); sys.exit(code)")
    converted = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak = int(converted.stdout.split("PEAK")[-1].split()[0])  # Linux reports ru_maxrss in KiB
    baseline_script = ("import vistok, transformers, torch, resource; "
                       "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    baseline = subprocess.run([sys.executable, "-c", baseline_script], check=True, capture_output=True, text=True)
    base = int(baseline.stdout.split()[-1])
    result = {"checkpoint_bytes": size, "shards": args.shards, "peak_rss_bytes": peak,
              "interpreter_baseline_bytes": base, "seconds": round(seconds, 1),
              "peak_above_baseline_over_checkpoint": round((peak - base) / size, 2)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
