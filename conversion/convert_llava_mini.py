"""Convert an original LLaVA-Mini checkpoint (ictnlp/LLaVA-Mini) into `LlavaMiniForConditionalGeneration`.

SOURCE is a directory in the layout of the hub release `ICTNLP/llava-mini-llama-3.1-8b` (the original
`save_pretrained` output): `config.json` (Llama fields + `mm_*`, `compressor_size`, `prefusion_layer_num`,
`resolution_ratio`), `model.safetensors` or sharded `model-*.safetensors` + `model.safetensors.index.json` (read one
shard at a time), optional tokenizer files. The CLIP tower is taken from the checkpoint (`model.vision_tower.*`) when
it is there, otherwise from the folder named by `mm_vision_tower` (relative to SOURCE, or absolute), laid out like the
hub repo `openai/clip-vit-large-patch14-336`. Unlike the original loader (which ignores the checkpoint's copy of the
tower and reloads it from `mm_vision_tower`), the checkpoint's own tensors win; when both exist they are compared.

Sizes come from tensor shapes; attention head counts from the configs (`--preset-overrides` names a CLIP tower that
is only known by its hub id).
"""

import math
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, GenerationConfig, LlamaConfig

from ..modeling.configuration_llava_mini import LlavaMiniConfig
from ..modeling.modeling_llava_mini import LlavaMiniForConditionalGeneration
from ..processing.processing_llava_mini import LlavaMiniImageProcessor, LlavaMiniProcessor, LlavaMiniVideoProcessor
from .utils import (
    ConversionError,
    ConversionResult,
    build_empty_model,
    checkpoint_files,
    count_layers,
    get_preset,
    llm_config_fields,
    load_checkpoint,
    load_config_file,
    load_presets,
    load_release_tokenizer,
    load_shards_into_model,
    read_checkpoint_shapes,
    rename_state_dict,
    require_shape,
    split_fused_qkv,
)

# CLIP towers named by `mm_vision_tower` in the releases (used when SOURCE has no tower folder with a config)
CLIP_PRESETS = {
    "openai/clip-vit-large-patch14-336": {
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
        "image_size": 336, "patch_size": 14, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    },
    "openai/clip-vit-large-patch14": {
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
        "image_size": 224, "patch_size": 14, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    },
}

RULES = [
    (r"lm_head\.weight", "lm_head.weight"),
    (r"model\.embed_tokens\.weight", "model.language_model.embed_tokens.weight"),
    (r"model\.layers\.(.+)", r"model.language_model.layers.\1"),
    (r"model\.norm\.weight", "model.language_model.norm.weight"),
    (r"model\.mm_projector\.0\.(weight|bias)", r"model.multi_modal_projector.linear_1.\1"),
    (r"model\.mm_projector\.2\.(weight|bias)", r"model.multi_modal_projector.linear_2.\1"),
    (r"model\.compressor\.(query|pos_embed)", r"model.compressor.\1"),
    (r"model\.compressor\.(ln_q|ln_kv)\.(weight|bias)", r"model.compressor.\1.\2"),
    (r"model\.compressor\.attn\.([qkv])_proj\.(weight|bias)", r"model.compressor.attn.\1_proj.\2"),
    (r"model\.compressor\.attn\.out_proj\.(weight|bias)", r"model.compressor.attn.out_proj.\1"),
    (r"model\.prefusion_layers\.(.+)", r"model.prefusion_layers.\1"),
    (r"model\.vision_tower\.vision_tower\.vision_model\.(.+)", r"model.vision_tower.\1"),
]
# recomputed buffers of old transformers versions
DROPPED = [r".*\.rotary_emb\.inv_freq", r".*\.embeddings\.position_ids"]
TOWER_PREFIX = "model.vision_tower.vision_tower."


def _require(shapes: dict, key: str) -> tuple[int, ...]:
    return require_shape(shapes, key, "LLaVA-Mini")


def _tower_folder(source: Path, name: str | None) -> Path | None:
    if not name:
        return None
    for candidate in (source / name, Path(name)):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def build_vision_config(
    shapes: dict, prefix: str, tower_dir: Path | None, tower_name: str | None, presets: dict
) -> CLIPVisionConfig:
    """CLIPVisionConfig from the tower's shapes, with head count/activation from its config or a known preset."""
    if tower_dir is not None:
        fields = load_config_file(tower_dir / "config.json")
        fields = fields.get("vision_config", fields)
    else:
        fields = dict(get_preset(presets, str(tower_name), ("num_attention_heads",)))
    hidden = _require(shapes, prefix + "embeddings.class_embedding")[0]
    patch = _require(shapes, prefix + "embeddings.patch_embedding.weight")
    positions = _require(shapes, prefix + "embeddings.position_embedding.weight")[0] - 1
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise ConversionError(f"the CLIP tower has {positions} patch positions, not a square grid.")
    sizes = {
        "hidden_size": hidden,
        "intermediate_size": _require(shapes, prefix + "encoder.layers.0.mlp.fc1.weight")[0],
        "num_hidden_layers": count_layers(shapes, prefix + "encoder.layers."),
        "num_channels": patch[1],
        "patch_size": patch[-1],
        "image_size": grid * patch[-1],
    }
    for name, value in sizes.items():
        if name in fields and fields[name] != value:
            raise ConversionError(f"vision tower {name}: config says {fields[name]}, weights say {value}.")
    keep = ("num_attention_heads", "hidden_act", "layer_norm_eps", "attention_dropout", "projection_dim")
    return CLIPVisionConfig(**{k: fields[k] for k in keep if k in fields}, **sizes)


def build_text_config(original: dict, shapes: dict) -> LlamaConfig:
    vocab, hidden = _require(shapes, "model.embed_tokens.weight")
    heads = original.get("num_attention_heads")
    if not heads:
        raise ConversionError("config.json lacks num_attention_heads (not in the weights).")
    head_dim = original.get("head_dim") or hidden // heads
    q_out = _require(shapes, "model.layers.0.self_attn.q_proj.weight")[0]
    k_out = _require(shapes, "model.layers.0.self_attn.k_proj.weight")[0]
    if q_out != heads * head_dim:
        raise ConversionError(f"q_proj has {q_out} outputs but config says {heads} heads x {head_dim}.")
    fields = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": _require(shapes, "model.layers.0.mlp.gate_proj.weight")[0],
        "num_hidden_layers": count_layers(shapes, "model.layers."),
        "num_attention_heads": heads,
        "num_key_value_heads": k_out // head_dim,
        "head_dim": head_dim,
        "attention_bias": "model.layers.0.self_attn.q_proj.bias" in shapes,
        "mlp_bias": "model.layers.0.mlp.gate_proj.bias" in shapes,
        "tie_word_embeddings": "lm_head.weight" not in shapes,
    }
    fields |= llm_config_fields(original)
    if original.get("initializer_range") is not None:
        fields["initializer_range"] = original["initializer_range"]
    return LlamaConfig(**fields)


def build_config(original: dict, shapes: dict, vision_config: CLIPVisionConfig) -> LlavaMiniConfig:
    if original.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise ConversionError(f"only the mlp2x_gelu projector is supported, got {original['mm_projector_type']!r}.")
    if str(original.get("image_aspect_ratio", "square")).startswith("anyres"):
        raise ConversionError(
            f"image_aspect_ratio {original['image_aspect_ratio']!r} is not supported (LLaVA-Mini's compressor takes "
            "one view or N*N + 1 high-resolution views); expected 'square' (the release) or 'pad'."
        )
    select = original.get("mm_vision_select_feature", "patch")
    if select != "patch":
        raise ConversionError(
            f"mm_vision_select_feature must be 'patch' (the compressor needs a square grid), got {select!r}."
        )
    queries, dim = _require(shapes, "model.compressor.query")
    grid = math.isqrt(queries)
    if grid * grid != queries or dim != vision_config.hidden_size:
        raise ConversionError(
            f"compressor queries {queries}x{dim}: need a square count and the vision width {vision_config.hidden_size}."
        )
    text_config = build_text_config(original, shapes)
    # placeholders live just past the vocabulary (they are never embedded)
    return LlavaMiniConfig(
        vision_config=vision_config,
        text_config=text_config,
        compressor_grid_size=grid,
        num_prefusion_layers=count_layers(shapes, "model.prefusion_layers."),
        resolution_ratio=int(original.get("resolution_ratio", 1)),
        vision_feature_layer=int(original.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy="default",
        image_token_id=text_config.vocab_size,
        video_token_id=text_config.vocab_size + 1,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )


def _convert_shard(state_dict: dict[str, torch.Tensor]) -> tuple[dict, list, list]:
    """One shard of the release, or of a separate CLIP folder (keys `vision_model.*`), in vistok's names."""
    state_dict = {(TOWER_PREFIX + k if k.startswith("vision_model.") else k): v for k, v in state_dict.items()}
    # nn.MultiheadAttention's packed in-projection (`attn.in_proj_weight`) -> separate q/k/v projections
    state_dict = {k.replace(".attn.in_proj_", ".attn.in_proj."): v for k, v in state_dict.items()}
    state_dict = split_fused_qkv(state_dict, "in_proj", ("q_proj", "k_proj", "v_proj"))
    return rename_state_dict(state_dict, RULES, DROPPED)


def convert(source, config_file=None, presets_file=None) -> ConversionResult:
    source = Path(source)
    if not source.is_dir():
        raise ConversionError(f"SOURCE must be a release directory (config.json + weights), got {source}.")
    original = load_config_file(config_file or source / "config.json")
    presets = load_presets(CLIP_PRESETS, presets_file)
    files = checkpoint_files(source)
    shapes = read_checkpoint_shapes(files)
    tower_name = original.get("mm_vision_tower") or original.get("vision_tower")
    tower_dir = _tower_folder(source, tower_name)
    tower_inside = any(k.startswith(TOWER_PREFIX) for k in shapes)
    notes = []
    if tower_inside:
        vision_shapes = {k[len(TOWER_PREFIX):]: v for k, v in shapes.items() if k.startswith(TOWER_PREFIX)}
    elif tower_dir is not None:
        files += checkpoint_files(tower_dir)
        vision_shapes = read_checkpoint_shapes(checkpoint_files(tower_dir))
        notes.append(f"CLIP tower read from {tower_dir}")
    else:
        raise ConversionError(
            f"the checkpoint has no model.vision_tower.* tensors and mm_vision_tower={tower_name!r} is not a local "
            "folder; download that CLIP repo and point mm_vision_tower (or a folder of that name in SOURCE) at it."
        )
    vision_config = build_vision_config(vision_shapes, "vision_model.", tower_dir, tower_name, presets)
    config = build_config(original, shapes, vision_config)
    tokenizer = _load_tokenizer(source)
    if tokenizer is not None:
        config.image_token_id, config.video_token_id = tokenizer.image_token_id, tokenizer.video_token_id
    model = build_empty_model(LlavaMiniForConditionalGeneration, config).eval()
    load_shards_into_model(model, files, _convert_shard)  # one shard in memory at a time, strict accounting
    if tower_inside and tower_dir is not None:
        _compare_tower(model, tower_dir, notes)
    if (source / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(source)
    return ConversionResult(model=model, processors=_processors(
        tower_dir, config, tokenizer, pad_to_square=original.get("image_aspect_ratio") == "pad"), notes=notes)


def _compare_tower(model, tower_dir: Path, notes: list) -> None:
    """The original loader uses the separate tower; say so when it differs from the checkpoint's copy."""
    tower = model.model.vision_tower.state_dict()
    for file in checkpoint_files(tower_dir):
        for key, tensor in load_checkpoint(file).items():
            if key in tower and not torch.equal(tower[key], tensor.to(tower[key].dtype)):
                notes.append(
                    f"{tower_dir} differs from the checkpoint's vision tower (first: {key}); used the checkpoint's."
                )
                return


def _load_tokenizer(source: Path):
    """The release's tokenizer (if SOURCE has one) with `<image>` / `<video>` placeholder tokens added (ids past the
    vocabulary: placeholders are never embedded), left padding and the original's pad token."""
    tokenizer = load_release_tokenizer(source, {"image_token": "<image>", "video_token": "<video>"})
    if tokenizer is None:
        return None
    if tokenizer.pad_token is None:
        # the original pads with Llama-3.1's <|finetune_right_pad_id|> (id 128004)
        pad = "<|finetune_right_pad_id|>"
        tokenizer.pad_token = pad if pad in tokenizer.get_vocab() else tokenizer.eos_token
    # batched generation pads on the left; init_kwargs is what save_pretrained writes
    tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "left"
    return tokenizer


def _processors(tower_dir: Path | None, config: LlavaMiniConfig, tokenizer, pad_to_square: bool) -> list:
    """Image / video processors (+ the processor with a tokenizer). `pad_to_square`: the original's
    `image_aspect_ratio: "pad"` (images only: the original's video reader resizes frames itself)."""
    size = config.vision_config.image_size
    fields = {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}
    if tower_dir is not None and (tower_dir / "preprocessor_config.json").is_file():
        original = load_config_file(tower_dir / "preprocessor_config.json")
        fields.update({k: original[k] for k in ("size", "crop_size", "image_mean", "image_std", "resample",
                                                "rescale_factor") if k in original})
    fields["resolution_ratio"] = config.resolution_ratio
    image_processor = LlavaMiniImageProcessor(**fields, pad_to_square=pad_to_square)
    video_processor = LlavaMiniVideoProcessor(**fields)
    if tokenizer is None:
        return [image_processor, video_processor]
    return [LlavaMiniProcessor(image_processor, video_processor, tokenizer, num_vision_tokens=config.num_vision_tokens)]
