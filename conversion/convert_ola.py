"""Convert a released Ola checkpoint (Ola-Omni/Ola, e.g. `THUdyh/Ola-7b`) into one self-contained
`OlaForConditionalGeneration` folder.

SOURCE layout (the hub release): `config.json` + `model.safetensors` or `model-0000x-of-0000n.safetensors` with
`model.safetensors.index.json` (Qwen2 LLM, OryxViT, projectors), the two speech encoder files the config points to
(`speech_encoder`: openai-whisper `large-v3.pt`, `music_encoder`: BEATs `.pt`; looked up relative to SOURCE, then
by file name in SOURCE and `SOURCE/pretrained/`) and, if present, the Qwen2 tokenizer files.

As the original loader does, the Whisper and BEATs weights come from the two `.pt` files (read with
`torch.load(weights_only=True)`); the copies under `model.speech_encoder.*` in the main checkpoint are dropped.
The shards are read one at a time and copied into the model, and every tensor is accounted for.

The OryxViT head count is not in the weights: it comes from the preset the original code hard-codes
(`siglip_so400m_patch16_384`), `--preset-overrides` (`{"siglip_so400m_patch16_384": {"num_attention_heads": ..}}`),
or, for a width no preset has, the most heads (at most 16) with a head dimension of at least 16, with a warning.
"""

import math
from pathlib import Path

import torch
from transformers import Qwen2Config, WhisperConfig

from ..modeling.configuration_ola import ORYX_VIT_PRESETS, BeatsConfig, OlaConfig, OryxViTConfig
from ..modeling.modeling_ola import OlaForConditionalGeneration
from .utils import (
    ConversionError,
    ConversionResult,
    build_empty_model,
    checkpoint_files,
    count_layers,
    llm_config_fields,
    load_config_file,
    load_presets,
    load_release_tokenizer,
    load_shards_into_model,
    logger,
    read_checkpoint_shapes,
    rename_state_dict,
    require_shape,
)


VIT = r"model\.vision_tower\.vision_tower\."
# fmt: off
MAIN_KEY_MAPPING = [
    (r"lm_head\.weight",                                  r"lm_head.weight"),
    (r"model\.(embed_tokens|norm)\.weight",               r"model.language_model.\1.weight"),
    (r"model\.layers\.(.+)",                              r"model.language_model.layers.\1"),
    (VIT + r"pos_embed",                                  r"model.vision_tower.embeddings.position_embedding"),
    (VIT + r"patch_embed\.proj\.(weight|bias)",           r"model.vision_tower.embeddings.patch_embedding.\1"),
    (VIT + r"blocks\.(\d+)\.norm([12])\.(weight|bias)",   r"model.vision_tower.layers.\1.norm\2.\3"),
    (VIT + r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)",    r"model.vision_tower.layers.\1.self_attn.qkv.\2"),
    (VIT + r"blocks\.(\d+)\.attn\.proj\.(weight|bias)",   r"model.vision_tower.layers.\1.self_attn.out_proj.\2"),
    (VIT + r"blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)", r"model.vision_tower.layers.\1.mlp.fc\2.\3"),
    (r"model\.mm_projector\.proj([12])\.(weight|bias)",   r"model.multi_modal_projector.proj\1.\2"),
    (r"model\.mm_projector\.pooler\.predictor\.0\.(weight|bias)", r"model.multi_modal_projector.pooler.fc1.\1"),
    (r"model\.mm_projector\.pooler\.predictor\.2\.(weight|bias)", r"model.multi_modal_projector.pooler.fc2.\1"),
    (r"model\.mm_projector\.image_(newline|begin|end)",   r"model.multi_modal_projector.separators.\1"),
    (r"model\.mm_projector\.image_sep",                   r"model.multi_modal_projector.separators.separator"),
    (r"model\.speech_projector\.linear([12])\.(weight|bias)", r"model.audio_projector.linear\1.\2"),
    (r"model\.speech_projector\.speech_(newline|begin|end)", r"model.audio_projector.separators.\1"),
]
# the original loader replaces these by the `.pt` files' weights
MAIN_DROPPED = [r"model\.speech_encoder\..+"]

WHISPER = r"model.audio_tower."
WHISPER_KEY_MAPPING = [
    (r"encoder\.conv([12])\.(weight|bias)",               WHISPER + r"conv\1.\2"),
    (r"encoder\.positional_embedding",                    WHISPER + r"embed_positions.weight"),
    (r"encoder\.blocks\.(\d+)\.attn\.query\.(weight|bias)", WHISPER + r"layers.\1.self_attn.q_proj.\2"),
    (r"encoder\.blocks\.(\d+)\.attn\.key\.weight",        WHISPER + r"layers.\1.self_attn.k_proj.weight"),
    (r"encoder\.blocks\.(\d+)\.attn\.value\.(weight|bias)", WHISPER + r"layers.\1.self_attn.v_proj.\2"),
    (r"encoder\.blocks\.(\d+)\.attn\.out\.(weight|bias)", WHISPER + r"layers.\1.self_attn.out_proj.\2"),
    (r"encoder\.blocks\.(\d+)\.attn_ln\.(weight|bias)",   WHISPER + r"layers.\1.self_attn_layer_norm.\2"),
    (r"encoder\.blocks\.(\d+)\.mlp\.0\.(weight|bias)",    WHISPER + r"layers.\1.fc1.\2"),
    (r"encoder\.blocks\.(\d+)\.mlp\.2\.(weight|bias)",    WHISPER + r"layers.\1.fc2.\2"),
    (r"encoder\.blocks\.(\d+)\.mlp_ln\.(weight|bias)",    WHISPER + r"layers.\1.final_layer_norm.\2"),
    (r"encoder\.ln_post\.(weight|bias)",                  WHISPER + r"layer_norm.\1"),
]
# Ola only uses Whisper's encoder
WHISPER_DROPPED = [r"decoder\..+", r"alignment_heads"]

BEATS = r"model.beats_tower."
BEATS_KEY_MAPPING = [
    (r"patch_embedding\.(weight|bias)",                   BEATS + r"embeddings.patch_embedding.\1"),  # bias: conv_bias
    (r"layer_norm\.(weight|bias)",                        BEATS + r"embeddings.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)",                 BEATS + r"embeddings.projection.\1"),
    (r"encoder\.pos_conv\.0\.(weight_g|weight_v)",        BEATS + r"pos_conv_embed.conv.\1"),
    (r"encoder\.pos_conv\.0\.bias",                       BEATS + r"pos_conv_embed.conv.bias"),
    (r"encoder\.layer_norm\.(weight|bias)",               BEATS + r"layer_norm.\1"),
    (r"encoder\.layers\.0\.self_attn\.relative_attention_bias\.weight",
     BEATS + r"position_bias.relative_attention_bias.weight"),
    (r"encoder\.layers\.(\d+)\.self_attn\.((?:q|k|v|out)_proj|grep_linear)\.(weight|bias)",
     BEATS + r"layers.\1.self_attn.\2.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn\.grep_a",        BEATS + r"layers.\1.self_attn.grep_a"),
    (r"encoder\.layers\.(\d+)\.(self_attn_layer_norm|final_layer_norm)\.(weight|bias)", BEATS + r"layers.\1.\2.\3"),
    (r"encoder\.layers\.(\d+)\.fc([12])\.(weight|bias)",  BEATS + r"layers.\1.feed_forward.fc\2.\3"),
]
# the AudioSet classification head is unused (Ola takes the features); the other layers' relative position
# tables are copies of layer 0's shared table (checked below)
BEATS_DROPPED = [r"predictor\..+", r"encoder\.layers\.([1-9]\d*)\.self_attn\.relative_attention_bias\.weight"]
# fmt: on

PLACEHOLDER_TOKENS = {"image_token": "<image>", "audio_token": "<speech>", "video_token": "<video>"}

def _torch_load(path: Path) -> dict:
    """The `.pt` file memory-mapped (its config is read now, its tensors when the file is converted)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        raise ConversionError(f"could not read {path} with torch.load(weights_only=True): {error}") from error


def _find_file(source: Path, configured: str | None, default: str, what: str) -> Path:
    name = configured or default
    candidates = [source / name, source / Path(name).name, source / "pretrained" / Path(name).name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConversionError(
        f"the {what} file {name!r} (named in config.json) was not found; looked at {[str(c) for c in candidates]}. "
        "Put it next to the checkpoint (the release ships it in THUdyh/Ola_speech_encoders)."
    )


def _vision_heads(width: int, presets: dict) -> int:
    """Head count of the OryxViT: the preset with this width (the original always builds
    `siglip_so400m_patch16_384`), else a guess."""
    for name in ("siglip_so400m_patch16_384", *presets):
        preset = presets.get(name, {})
        if preset.get("hidden_size", width) == width and "num_attention_heads" in preset:
            return preset["num_attention_heads"]
    heads = max(h for h in range(1, 17) if width % h == 0 and width // h >= 16 or h == 1)
    logger.warning(
        "no OryxViT preset has width %d; guessing %d attention heads (pass --preset-overrides "
        '{"siglip_so400m_patch16_384": {"hidden_size": %d, "num_attention_heads": N}} to set it).',
        width, heads, width,
    )
    return heads


def build_config(
    original: dict, checkpoint_shapes: dict, whisper_dims: dict, beats_cfg: dict, presets: dict
) -> OlaConfig:
    """``checkpoint_shapes``: ``read_checkpoint_shapes`` of the main checkpoint."""
    vit = "model.vision_tower.vision_tower."
    grid_len, width = require_shape(checkpoint_shapes, vit + "pos_embed", "Ola")[-2:]
    shapes = {key: shape for key, (shape, _) in checkpoint_shapes.items()}
    grid = math.isqrt(grid_len)
    if grid * grid != grid_len:
        raise ConversionError(f"OryxViT position table has {grid_len} entries, not a square grid.")
    vision_config = OryxViTConfig(
        hidden_size=width,
        num_hidden_layers=count_layers(shapes, vit + "blocks"),
        num_attention_heads=_vision_heads(width, presets),
        intermediate_size=shapes[vit + "blocks.0.mlp.fc1.weight"][0],
        patch_size=shapes[vit + "patch_embed.proj.weight"][-1],
        num_channels=shapes[vit + "patch_embed.proj.weight"][1],
        position_grid_size=grid,
    )
    n_vocab = whisper_dims["n_vocab"]
    special = {k: min(v, n_vocab - 1) for k, v in
               {"pad_token_id": 50256, "bos_token_id": 50257, "eos_token_id": 50257, "decoder_start_token_id": 50258}.items()}
    audio_config = WhisperConfig(
        vocab_size=n_vocab,
        num_mel_bins=whisper_dims["n_mels"],
        max_source_positions=whisper_dims["n_audio_ctx"],
        d_model=whisper_dims["n_audio_state"],
        encoder_attention_heads=whisper_dims["n_audio_head"],
        encoder_layers=whisper_dims["n_audio_layer"],
        encoder_ffn_dim=4 * whisper_dims["n_audio_state"],
        max_target_positions=whisper_dims["n_text_ctx"],
        decoder_attention_heads=whisper_dims["n_text_head"],
        decoder_layers=whisper_dims["n_text_layer"],
        decoder_ffn_dim=4 * whisper_dims["n_text_state"],
        begin_suppress_tokens=None,
        suppress_tokens=None,
        **special,
    )
    if beats_cfg.get("activation_fn", "gelu") == "glu" or not beats_cfg.get("relative_position_embedding", True):
        raise ConversionError(f"unsupported BEATs variant (GLU FFN or no relative position bias): {beats_cfg}")
    defaults = BeatsConfig()
    beats_config = BeatsConfig(
        patch_size=beats_cfg.get("input_patch_size", defaults.patch_size),
        patch_embedding_size=beats_cfg.get("embed_dim", defaults.patch_embedding_size),
        conv_bias=beats_cfg.get("conv_bias", defaults.conv_bias),
        hidden_size=beats_cfg.get("encoder_embed_dim", defaults.hidden_size),
        num_hidden_layers=beats_cfg.get("encoder_layers", defaults.num_hidden_layers),
        num_attention_heads=beats_cfg.get("encoder_attention_heads", defaults.num_attention_heads),
        intermediate_size=beats_cfg.get("encoder_ffn_embed_dim", defaults.intermediate_size),
        hidden_act=beats_cfg.get("activation_fn", defaults.hidden_act),
        layer_norm_first=beats_cfg.get("layer_norm_first", defaults.layer_norm_first),
        deep_norm=beats_cfg.get("deep_norm", defaults.deep_norm),
        conv_pos=beats_cfg.get("conv_pos", defaults.conv_pos),
        conv_pos_groups=beats_cfg.get("conv_pos_groups", defaults.conv_pos_groups),
        num_buckets=beats_cfg.get("num_buckets", defaults.num_buckets),
        max_distance=beats_cfg.get("max_distance", defaults.max_distance),
        gru_rel_pos=beats_cfg.get("gru_rel_pos", defaults.gru_rel_pos),
    )
    # sizes from the weights; the original forces `rope_scaling` to None
    text_config = Qwen2Config(
        **llm_config_fields({**original, "rope_scaling": None}),
        vocab_size=shapes["model.embed_tokens.weight"][0],
        hidden_size=shapes["model.embed_tokens.weight"][1],
        intermediate_size=shapes["model.layers.0.mlp.gate_proj.weight"][0],
        num_hidden_layers=count_layers(shapes, "model.layers"),
        num_attention_heads=original["num_attention_heads"],
        num_key_value_heads=original.get("num_key_value_heads", original["num_attention_heads"]),
        initializer_range=original.get("initializer_range", 0.02),
        tie_word_embeddings=bool(original.get("tie_word_embeddings", False)),
    )
    vocab = text_config.vocab_size
    return OlaConfig(
        vision_config=vision_config,
        audio_config=audio_config,
        beats_config=beats_config,
        text_config=text_config,
        audio_projector_hidden_size=shapes["model.speech_projector.linear1.weight"][0],
        audio_downsample_rate=original.get("speech_encoder_ds_rate", 10),
        image_token_id=vocab,
        audio_token_id=vocab + 1,
        video_token_id=vocab + 2,
        tie_word_embeddings=bool(original.get("tie_word_embeddings", False)),
    )


def _fold_weight_norm(state: dict, prefix: str) -> None:
    """BEATs' position conv uses weight norm over dim 2: weight = g * v / ||v|| (norm over dims 0 and 1)."""
    g, v = state.pop(prefix + "weight_g"), state.pop(prefix + "weight_v")
    state[prefix + "weight"] = g * v / v.norm(dim=(0, 1), keepdim=True)


def _split_qkv(state: dict) -> None:
    for key in [k for k in state if ".self_attn.qkv." in k]:
        for name, part in zip(("q_proj", "k_proj", "v_proj"), state.pop(key).chunk(3, dim=0)):
            state[key.replace(".qkv.", f".{name}.")] = part


def _convert_state(state: dict, dtype: torch.dtype) -> tuple[dict, list, list]:
    """One checkpoint file -> model names: a main-checkpoint shard, the Whisper `.pt` or the BEATs `.pt`."""
    if "encoder.conv1.weight" in state:  # openai-whisper
        renamed, unmapped, dropped = rename_state_dict(state, WHISPER_KEY_MAPPING, WHISPER_DROPPED)
    elif "encoder.pos_conv.0.weight_v" in state:  # BEATs
        shared = state.get("encoder.layers.0.self_attn.relative_attention_bias.weight")
        for key, tensor in state.items():
            if key.endswith("relative_attention_bias.weight") and not torch.equal(tensor, shared):
                raise ConversionError(f"{key} differs from layer 0's table, but BEATs shares one table across layers.")
        renamed, unmapped, dropped = rename_state_dict(state, BEATS_KEY_MAPPING, BEATS_DROPPED)
        _fold_weight_norm(renamed, BEATS + "pos_conv_embed.conv.")
    else:
        renamed, unmapped, dropped = rename_state_dict(state, MAIN_KEY_MAPPING, MAIN_DROPPED)
        key = "model.vision_tower.embeddings.position_embedding"
        if key in renamed:
            renamed[key] = renamed[key].reshape(-1, renamed[key].shape[-1])
        _split_qkv(renamed)
    return {k: v.to(dtype).contiguous() for k, v in renamed.items()}, unmapped, dropped


def convert(source, config_file=None, presets_file=None) -> ConversionResult:
    source = Path(source)
    if not source.is_dir():
        raise ConversionError(f"SOURCE must be the release folder (config.json + safetensors), got {source}.")
    original = load_config_file(config_file or source / "config.json")
    presets = load_presets(ORYX_VIT_PRESETS, presets_file)
    shards = checkpoint_files(source)
    whisper_file = _find_file(source, original.get("speech_encoder"), "large-v3.pt", "Whisper")
    beats_file = _find_file(source, original.get("music_encoder"), "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt",
                            "BEATs")
    logger.info("reading %s and %s", whisper_file, beats_file)
    whisper = _torch_load(whisper_file)
    beats = _torch_load(beats_file)
    if not {"dims", "model_state_dict"} <= set(whisper) or not {"cfg", "model"} <= set(beats):
        raise ConversionError("expected an openai-whisper file {dims, model_state_dict} and a BEATs file {cfg, model}.")

    checkpoint_shapes = read_checkpoint_shapes(shards)
    config = build_config(original, checkpoint_shapes, whisper["dims"], beats["cfg"], presets)
    model = build_empty_model(OlaForConditionalGeneration, config).eval()
    # one dtype for every part: the original runs the speech encoders in the model's dtype (infer.py casts it all)
    dtype = checkpoint_shapes["model.embed_tokens.weight"][1]
    load_shards_into_model(model, [*shards, whisper_file, beats_file], lambda state: _convert_state(state, dtype))
    notes = [f"Whisper from {whisper_file.name}, BEATs from {beats_file.name}; model.speech_encoder.* copies dropped"]
    processors = []
    tokenizer = load_release_tokenizer(source, PLACEHOLDER_TOKENS)
    if tokenizer is None:
        notes.append("no tokenizer files in SOURCE: no processor written (placeholder ids = vocab_size + 0/1/2)")
        logger.warning(notes[-1])
    else:
        processors.append(_attach_tokenizer(model, tokenizer))
    return ConversionResult(model=model, processors=processors, notes=notes)


def _attach_tokenizer(model: OlaForConditionalGeneration, tokenizer):
    """``tokenizer``: the release tokenizer with the three placeholder tokens added after it. As the original loader
    (`resize_token_embeddings(len(tokenizer))`, which drops the unused padding rows), shrink the embeddings and LM head
    to the release tokenizer; the placeholder ids go into the config."""
    from ..processing.feature_extraction_ola import OlaFeatureExtractor
    from ..processing.image_processing_ola import OlaImageProcessor
    from ..processing.processing_ola import OlaProcessor

    config = model.config
    placeholder_ids = tokenizer.convert_tokens_to_ids(list(PLACEHOLDER_TOKENS.values()))
    # the placeholders were appended to the release tokenizer unless it already had them
    size = len(tokenizer) - sum(i >= len(tokenizer) - len(placeholder_ids) for i in placeholder_ids)
    if size < config.text_config.vocab_size:
        logger.info("shrinking the vocabulary from %d to the tokenizer's %d tokens", config.text_config.vocab_size, size)
        model.resize_token_embeddings(size)
    config.image_token_id, config.audio_token_id, config.video_token_id = placeholder_ids
    return OlaProcessor(OlaImageProcessor(), OlaFeatureExtractor(), tokenizer,
                        audio_downsample_rate=config.audio_downsample_rate)
