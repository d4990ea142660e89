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

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import Qwen2Config, WhisperConfig
from transformers.initialization import no_init_weights

from ..modeling.configuration_ola import ORYX_VIT_PRESETS, BeatsConfig, OlaConfig, OryxViTConfig
from ..modeling.modeling_ola import OlaForConditionalGeneration
from .utils import ConversionError, ConversionResult, load_config_file, load_presets, logger, rename_state_dict


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
    (r"patch_embedding\.weight",                          BEATS + r"embeddings.patch_embedding.weight"),
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

QWEN2_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "rope_theta", "attention_dropout", "use_sliding_window", "sliding_window", "max_window_layers",
    "bos_token_id", "eos_token_id", "tie_word_embeddings",
)


def _torch_load(path: Path) -> dict:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
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


def _shard_files(source: Path) -> list[Path]:
    index = source / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [source / name for name in sorted(set(weight_map.values()))]
    if (source / "model.safetensors").is_file():
        return [source / "model.safetensors"]
    raise ConversionError(f"{source} has neither model.safetensors nor model.safetensors.index.json.")


def _layer_count(keys, prefix: str) -> int:
    indices = {int(k[len(prefix):].split(".")[0]) for k in keys if k.startswith(prefix)}
    if sorted(indices) != list(range(len(indices))):
        raise ConversionError(f"layers under {prefix!r} are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


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


def _shapes(shards: list[Path]) -> dict[str, tuple]:
    from safetensors import safe_open

    shapes = {}
    for shard in shards:
        with safe_open(str(shard), "pt") as handle:
            shapes.update({key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()})
    return shapes


def build_config(original: dict, shapes: dict, whisper_dims: dict, beats_cfg: dict, presets: dict) -> OlaConfig:
    vit = "model.vision_tower.vision_tower."
    if vit + "pos_embed" not in shapes:
        raise ConversionError("the checkpoint has no OryxViT (model.vision_tower.vision_tower.pos_embed).")
    grid_len, width = shapes[vit + "pos_embed"][-2:]
    grid = math.isqrt(grid_len)
    if grid * grid != grid_len:
        raise ConversionError(f"OryxViT position table has {grid_len} entries, not a square grid.")
    vision_config = OryxViTConfig(
        hidden_size=width,
        num_hidden_layers=_layer_count(shapes, vit + "blocks."),
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
    text = {k: original[k] for k in QWEN2_FIELDS if original.get(k) is not None}
    # the original forces `rope_scaling` to None
    text_config = Qwen2Config.from_dict({**text, "rope_parameters": {"rope_type": "default",
                                                                      "rope_theta": original.get("rope_theta", 1e4)}})
    text_config.vocab_size = shapes["model.embed_tokens.weight"][0]
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


class _Filler:
    """Copies converted tensors into the model piece by piece and keeps the accounting."""

    def __init__(self, model: torch.nn.Module):
        self.target = model.state_dict()
        self.filled, self.problems = set(), []

    def add(self, state: dict, unmapped: list) -> None:
        self.problems += [f"source tensor with no mapping: {k}" for k in unmapped]
        for key, tensor in state.items():
            if key not in self.target:
                self.problems.append(f"converted tensor the model does not have: {key}")
            elif tuple(tensor.shape) != tuple(self.target[key].shape):
                self.problems.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(self.target[key].shape)}")
            elif key in self.filled:
                self.problems.append(f"{key} is filled twice")
            else:
                self.target[key].copy_(tensor.to(self.target[key].dtype))
                self.filled.add(key)

    def finish(self) -> None:
        missing = sorted(set(self.target) - self.filled)
        problems = self.problems + ([f"model tensors missing from the checkpoint: {missing}"] if missing else [])
        if problems:
            raise ConversionError("checkpoint does not match the model:\n  " + "\n  ".join(problems))


def convert(source, config_file=None, presets_file=None) -> ConversionResult:
    source = Path(source)
    if not source.is_dir():
        raise ConversionError(f"SOURCE must be the release folder (config.json + safetensors), got {source}.")
    original = load_config_file(config_file or source / "config.json")
    presets = load_presets(ORYX_VIT_PRESETS, presets_file)
    shards = _shard_files(source)
    whisper_file = _find_file(source, original.get("speech_encoder"), "large-v3.pt", "Whisper")
    beats_file = _find_file(source, original.get("music_encoder"), "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt",
                            "BEATs")
    logger.info("reading %s and %s", whisper_file, beats_file)
    whisper = _torch_load(whisper_file)
    beats = _torch_load(beats_file)
    if not {"dims", "model_state_dict"} <= set(whisper) or not {"cfg", "model"} <= set(beats):
        raise ConversionError("expected an openai-whisper file {dims, model_state_dict} and a BEATs file {cfg, model}.")

    config = build_config(original, _shapes(shards), whisper["dims"], beats["cfg"], presets)
    # every parameter is overwritten below (strictly checked), so skip the random init (minutes for 9B weights)
    with no_init_weights():
        model = OlaForConditionalGeneration(config).eval()
    filler = _Filler(model)
    with torch.no_grad():
        for shard in shards:
            logger.info("converting %s", shard.name)
            renamed, unmapped, _ = rename_state_dict(load_file(str(shard)), MAIN_KEY_MAPPING, MAIN_DROPPED)
            key = "model.vision_tower.embeddings.position_embedding"
            if key in renamed:
                renamed[key] = renamed[key].reshape(-1, renamed[key].shape[-1])
            _split_qkv(renamed)
            filler.add(renamed, unmapped)
        renamed, unmapped, _ = rename_state_dict(whisper["model_state_dict"], WHISPER_KEY_MAPPING, WHISPER_DROPPED)
        filler.add(renamed, unmapped)
        shared = "encoder.layers.0.self_attn.relative_attention_bias.weight"
        for key, tensor in beats["model"].items():
            if key.endswith("relative_attention_bias.weight") and not torch.equal(tensor, beats["model"][shared]):
                raise ConversionError(f"{key} differs from layer 0's table, but BEATs shares one table across layers.")
        renamed, unmapped, _ = rename_state_dict(beats["model"], BEATS_KEY_MAPPING, BEATS_DROPPED)
        _fold_weight_norm(renamed, BEATS + "pos_conv_embed.conv.")
        filler.add(renamed, unmapped)
    filler.finish()
    notes = [f"Whisper from {whisper_file.name}, BEATs from {beats_file.name}; model.speech_encoder.* copies dropped"]
    processors = []
    tokenizer = _load_tokenizer(source)
    if tokenizer is None:
        notes.append("no tokenizer files in SOURCE: no processor written (placeholder ids = vocab_size + 0/1/2)")
        logger.warning(notes[-1])
    else:
        processors.append(_attach_tokenizer(model, tokenizer))
    return ConversionResult(model=model, processors=processors, notes=notes)


def _load_tokenizer(source: Path):
    if not any((source / name).is_file() for name in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source))


def _attach_tokenizer(model: OlaForConditionalGeneration, tokenizer):
    """As the original loader, shrink the embeddings and LM head to the tokenizer (`resize_token_embeddings(
    len(tokenizer))` drops the unused padding rows), then add the three placeholder tokens after it."""
    from ..processing.feature_extraction_ola import OlaFeatureExtractor
    from ..processing.image_processing_ola import OlaImageProcessor
    from ..processing.processing_ola import OlaProcessor

    config = model.config
    size = len(tokenizer)
    if size < config.text_config.vocab_size:
        logger.info("shrinking the vocabulary from %d to the tokenizer's %d tokens", config.text_config.vocab_size, size)
        model.resize_token_embeddings(size)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<speech>", "<video>"]},
                                 replace_extra_special_tokens=False)
    config.image_token_id, config.audio_token_id, config.video_token_id = tokenizer.convert_tokens_to_ids(
        ["<image>", "<speech>", "<video>"]
    )
    return OlaProcessor(OlaImageProcessor(), OlaFeatureExtractor(), tokenizer,
                        audio_downsample_rate=config.audio_downsample_rate)
