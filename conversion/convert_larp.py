"""Convert released LARP tokenizers (hywang66/LARP, `LARPTokenizer`) into `LARPModel`.

SOURCE: the huggingface_hub `PyTorchModelHubMixin` folder of the release (`hywang66/LARP-L-long-tokenizer`):
`config.json` (the constructor arguments, with nested `bottleneck` and `prior_model` dicts) + `model.safetensors`
(flat state dict), or a single checkpoint file with `--config`. Training checkpoints (`{"model": {"sd": ...}}`)
are not read: save them with `save_pretrained` first.

Sizes come from tensor shapes and the config. The AR prior (`prior_model.*`) is converted when the weights hold
it (the upload may leave it out: then the tokenizer is converted without a prior); its head count comes from the
preset named in `prior_model.name` (`gptc-*`, more through `--preset-overrides`), else 64 channels per head as in
every released preset. The fixed sin-cos tables the release stores as buffers are checked against the ones the
model computes and then dropped. The original's non-released variants with learned position tables or token-type
vectors (`learned_*_pe`, `learned_decoder_patch_query_embed`, `use_*_token_type_embed` except the released decoder
patch-query one) convert to `learned_position_embeddings=True`: per-axis tables are summed and token-type vectors
added into the saved tables (and into the latent queries), as the original sums them before use.
"""

import torch

from ..modeling.configuration_larp import LARP_PRIOR_PRESETS, LARPConfig
from ..modeling.modeling_larp import LARPModel
from ..processing.video_processing_larp import LARPVideoProcessor
from .utils import (
    ConversionError,
    ConversionResult,
    count_layers,
    load_into_model,
    load_presets,
    logger,
    read_checkpoint_and_config,
    rename_state_dict,
    require_tensor,
    split_fused_qkv,
)


# fmt: off
ORIGINAL_TO_CONVERTED_KEY_MAPPING = [
    (r"x_embedder\.proj\.(weight|bias)",                          r"embeddings.patch_embedding.\1"),
    (r"encoder_latent_query_embed",                               r"embeddings.latent_queries"),
    (r"(encoder|decoder)\.blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)", r"\1.layers.\2.\3.\4"),
    (r"(encoder|decoder)\.blocks\.(\d+)\.attn\.qkv\.weight",      r"\1.layers.\2.self_attn.qkv.weight"),
    (r"(encoder|decoder)\.blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"\1.layers.\2.self_attn.out_proj.\3"),
    (r"(encoder|decoder)\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"\1.layers.\2.mlp.\3.\4"),
    (r"bottleneck\.in_linear\.(weight|bias)",                     r"quant_proj.\1"),
    (r"bottleneck\.out_linear\.(weight|bias)",                    r"decoder_embeddings.post_quant_proj.\1"),
    (r"bottleneck\.regularizer\.embedding\.weight",               r"quantizer.embedding"),
    (r"decoder_patch_query_token_type_embed",                     r"decoder_embeddings.patch_query_type_embedding"),
    (r"final_layer\.norm_final\.(weight|bias)",                   r"pixel_head.norm.\1"),
    (r"final_layer\.linear\.(weight|bias)",                       r"pixel_head.linear.\1"),
    (r"prior_model\.input_proj\.(weight|bias)",                   r"prior.embeddings.input_proj.\1"),
    (r"prior_model\.pos_emb",                                     r"prior.embeddings.position_embedding"),
    (r"prior_model\.blocks\.(\d+)\.ln(1|2)\.(weight|bias)",       r"prior.layers.\1.norm\2.\3"),
    (r"prior_model\.blocks\.(\d+)\.attn\.query\.(weight|bias)",   r"prior.layers.\1.self_attn.q_proj.\2"),
    (r"prior_model\.blocks\.(\d+)\.attn\.key\.(weight|bias)",     r"prior.layers.\1.self_attn.k_proj.\2"),
    (r"prior_model\.blocks\.(\d+)\.attn\.value\.(weight|bias)",   r"prior.layers.\1.self_attn.v_proj.\2"),
    (r"prior_model\.blocks\.(\d+)\.attn\.proj\.(weight|bias)",    r"prior.layers.\1.self_attn.out_proj.\2"),
    (r"prior_model\.blocks\.(\d+)\.mlp\.0\.(weight|bias)",        r"prior.layers.\1.mlp.fc1.\2"),
    (r"prior_model\.blocks\.(\d+)\.mlp\.2\.(weight|bias)",        r"prior.layers.\1.mlp.fc2.\2"),
    (r"prior_model\.ln_f\.(weight|bias)",                         r"prior.final_layernorm.\1"),
    (r"prior_model\.head\.(weight|bias)",                         r"prior.head.\1"),
]
# fixed sin-cos tables stored as persistent buffers: compared with the model's own tables, then dropped
SINCOS_BUFFERS = {
    "encoder_patch_pe": ("embeddings", "position_embedding"),
    "decoder_latent_pe": ("decoder_embeddings", "latent_position_embedding"),
    "decoder_patch_query_embed": ("decoder_embeddings", "patch_query_embedding"),
}
# position tables of the original's non-released variants: target -> (summed source tables, optional added vector);
# a learned table is the sum of per-axis parameters (`[1, T, 1, 1, D] + [1, 1, H, 1, D] + [1, 1, 1, W, D]`)
LEARNED_TABLES = {
    "embeddings.position_embedding": (
        ("encoder_h_embed", "encode_w_embed", "encoder_t_embed"), "encoder_patch_pe", "encoder_patch_token_type_embed"),
    "decoder_embeddings.latent_position_embedding": ((), "decoder_latent_pe", "decoder_latent_token_type_embed"),
    "decoder_embeddings.patch_query_embedding": (
        ("decoder_h_embed", "decoder_w_embed", "decoder_t_embed"), "decoder_patch_query_embed", None),
}
# original flags that make the position tables learned (`LARPConfig.learned_position_embeddings`)
LEARNED_FLAGS = ("learned_encoder_patch_pe", "learned_decoder_latent_pe", "learned_decoder_patch_query_embed",
                 "use_encoder_patch_token_type_embed", "use_decoder_latent_token_type_embed")
TRANSFORMER = "transformer_encoder_parallel"
# fmt: on


def _position_tables(state_dict: dict) -> tuple[dict, list[str]]:
    """The three position tables as `[N, D]` tensors (per-axis tables summed, token-type vectors added, as the
    original adds them before use), and the source keys they consume."""
    tables, consumed = {}, []
    for target, (axes, stored, type_vector) in LEARNED_TABLES.items():
        if axes and all(key in state_dict for key in axes):
            table = sum(state_dict[key].float() for key in axes)
            consumed += list(axes)
        else:
            table = require_tensor(state_dict, stored, "LARP tokenizer").float()
            consumed.append(stored)
        table = table.reshape(-1, table.shape[-1])
        if type_vector and type_vector in state_dict:
            table = table + state_dict[type_vector].reshape(1, -1).float()
            consumed.append(type_vector)
        tables[target] = table
    return tables, consumed


def _has_learned_tables(state_dict: dict, original: dict) -> bool:
    keys = ("encoder_h_embed", "decoder_h_embed", "encoder_patch_token_type_embed", "decoder_latent_token_type_embed")
    return any(original.get(flag) for flag in LEARNED_FLAGS) or any(key in state_dict for key in keys)


def _check_released_layout(original: dict) -> dict:
    for name in ("transformer_name", "encoder_name", "decoder_name"):
        if str(original.get(name) or "none").lower() not in ("none", "no", "null", "", TRANSFORMER):
            raise ConversionError(f"{name}={original[name]!r} is not supported (released: {TRANSFORMER}).")
    bottleneck = original.get("bottleneck", {}).get("args", {})
    regularizer = bottleneck.get("regularizer", {})
    vq = regularizer.get("args", {})
    if regularizer.get("name") != "vq" or not vq.get("l2_normalized") or not vq.get("stochastic"):
        raise ConversionError(
            f"only the released l2-normalised stochastic VQ bottleneck is supported, got {regularizer!r}."
        )
    if str(bottleneck.get("norm") or "none").lower() not in ("none", "no"):
        raise ConversionError(f"bottleneck norm {bottleneck['norm']!r} is not supported (released: none).")
    temperature = float(vq.get("stochastic_temperature", 0.03))
    if temperature <= 0:
        raise ConversionError("a learnable quantizer temperature (stochastic_temperature <= 0) is not supported.")
    return {"stochastic_temperature": temperature, "commitment_cost": float(vq.get("commitment_loss_weight", 0.25))}


def build_config(state_dict: dict, original: dict, presets: dict) -> LARPConfig:
    """Derives a `LARPConfig` from tensor shapes and the original constructor arguments."""
    quantizer_fields = _check_released_layout(original)
    what = "LARP tokenizer"
    patch = require_tensor(state_dict, "x_embedder.proj.weight", what)
    if patch.ndim == 4:  # temporal_patch_size 1: the original embeds each frame with a 2D patch embedding
        patch = patch[:, :, None]
    width, channels, temporal_patch, patch_size = patch.shape[0], patch.shape[1], patch.shape[2], patch.shape[3]
    image_size, num_frames = int(original.get("input_size", 128)), int(original.get("frame_num", 16))
    num_patches = _position_tables(state_dict)[0]["embeddings.position_embedding"].shape[0]
    if num_patches != (num_frames // temporal_patch) * (image_size // patch_size) ** 2:
        raise ConversionError(
            f"encoder_patch_pe has {num_patches} rows but input_size {image_size} / frame_num {num_frames} with "
            f"{temporal_patch}x{patch_size}x{patch_size} patches give "
            f"{(num_frames // temporal_patch) * (image_size // patch_size) ** 2}."
        )
    queries = require_tensor(state_dict, "encoder_latent_query_embed", what)
    codebook = require_tensor(state_dict, "bottleneck.regularizer.embedding.weight", what)
    head = require_tensor(state_dict, "final_layer.linear.weight", what)
    decoder_width = require_tensor(state_dict, "bottleneck.out_linear.weight", what).shape[0]
    decoder_patch = int(original.get("decoder_patch_size", patch_size))
    decoder_temporal = int(original.get("decoder_temporal_patch_size", temporal_patch))
    if head.shape[0] != decoder_temporal * decoder_patch**2 * channels:
        raise ConversionError(f"final_layer.linear predicts {head.shape[0]} values per patch, not "
                              f"{decoder_temporal}x{decoder_patch}x{decoder_patch}x{channels}.")
    kwargs = dict(
        image_size=image_size, num_frames=num_frames, num_channels=channels, patch_size=patch_size,
        temporal_patch_size=temporal_patch, decoder_patch_size=decoder_patch,
        decoder_temporal_patch_size=decoder_temporal, num_latent_tokens=queries.shape[0],
        encoder_hidden_size=width, encoder_num_hidden_layers=count_layers(state_dict, "encoder.blocks."),
        encoder_num_attention_heads=int(original.get("encoder_num_heads", 12)),
        decoder_hidden_size=decoder_width, decoder_num_hidden_layers=count_layers(state_dict, "decoder.blocks."),
        decoder_num_attention_heads=int(original.get("decoder_num_heads", 12)),
        mlp_ratio=state_dict["encoder.blocks.0.mlp.fc1.weight"].shape[0] / width,
        bottleneck_dim=codebook.shape[1], codebook_size=codebook.shape[0],
        latent_pe_scale_factor=float(original.get("latent_pe_scale_factor", 10000)),
        use_decoder_patch_query_token_type_embed="decoder_patch_query_token_type_embed" in state_dict,
        learned_position_embeddings=_has_learned_tables(state_dict, original),
        **quantizer_fields,
    )
    prior = original.get("prior_model") or {}
    has_prior_weights = "prior_model.input_proj.weight" in state_dict
    if has_prior_weights:
        prior_width = state_dict["prior_model.input_proj.weight"].shape[0]
        name = prior.get("name", "")
        preset = presets.get(name, {})
        heads = preset.get("num_attention_heads", prior_width // 64)
        if name not in presets:
            logger.info("prior %r is not a known preset: using %d heads of 64 channels", name, heads)
        layers = count_layers(state_dict, "prior_model.blocks.")
        for field, value in (("hidden_size", prior_width), ("num_hidden_layers", layers)):
            if field in preset and preset[field] != value:
                raise ConversionError(f"prior preset {name!r} says {field}={preset[field]} but the weights have {value}.")
        kwargs.update(
            prior_hidden_size=prior_width, prior_num_hidden_layers=layers, prior_num_attention_heads=heads,
            prior_max_position_embeddings=state_dict["prior_model.pos_emb"].shape[1],
            prior_latent_ce_temperature=float(prior.get("latent_ce_temperature", 1.0)),
            # GPTCConfig's default is True, and `ar_predict` skips the normalisation when it is off
            prior_l2_normalized=bool((prior.get("args") or {}).get("l2_normalized", True)),
        )
    elif str(prior.get("name") or "none").lower() not in ("none", "no", "null", ""):
        logger.info("the config names prior %r but the weights hold none: converting the tokenizer alone",
                    prior.get("name"))
    try:
        return LARPConfig(**kwargs)
    except Exception as error:
        raise ConversionError(f"the checkpoint describes an invalid LARP configuration: {error}") from error


def convert_state_dict(state_dict: dict, model: LARPModel) -> tuple[dict, list]:
    tables, consumed = _position_tables(state_dict)
    if not model.config.learned_position_embeddings:
        for source_key, (module_name, buffer_name) in SINCOS_BUFFERS.items():
            expected = getattr(getattr(model, module_name), buffer_name)
            stored = tables[f"{module_name}.{buffer_name}"].reshape(expected.shape)
            if not torch.allclose(stored, expected.float(), atol=1e-5):
                raise ConversionError(
                    f"{source_key} is not the sin-cos table LARP builds (max diff "
                    f"{(stored - expected.float()).abs().max():.3g}) although no learned_* flag is set in config.json."
                )
        logger.info("checked and dropped the stored sin-cos tables: %s", consumed)
        tables = {}
    state_dict = {key: value for key, value in state_dict.items() if key not in consumed}
    if "encoder_latent_query_token_type_embed" in state_dict:  # added to every query before use: fold it in
        state_dict = dict(state_dict)
        vector = state_dict.pop("encoder_latent_query_token_type_embed").reshape(1, -1)
        state_dict["encoder_latent_query_embed"] = state_dict["encoder_latent_query_embed"] + vector
    renamed, unmapped, _ = rename_state_dict(state_dict, ORIGINAL_TO_CONVERTED_KEY_MAPPING)
    converted = split_fused_qkv(renamed, "qkv", ("q_proj", "k_proj", "v_proj")) | tables
    target = model.state_dict()
    for key, tensor in converted.items():
        if key in target and tensor.shape != target[key].shape and tensor.numel() == target[key].numel():
            # [1, L, D] tables and the [1, 1, D] type vector lose their leading dims; a 2D patch conv gains a time axis
            converted[key] = tensor.reshape(target[key].shape)
    return converted, unmapped


def convert(source, config_file=None, presets_file=None) -> ConversionResult:
    state_dict, original = read_checkpoint_and_config(source, config_file)
    presets = load_presets(LARP_PRIOR_PRESETS, presets_file)
    config = build_config(state_dict, original, presets)
    logger.info("building LARPModel (%d tokens, %s prior)", config.num_latent_tokens,
                "with" if config.prior_hidden_size else "without")
    model = LARPModel(config).eval()
    converted, unmapped = convert_state_dict(state_dict, model)
    load_into_model(model, converted, unmapped)
    height, width = config.frame_size
    processor = LARPVideoProcessor(
        num_frames=config.num_frames, size={"shortest_edge": min(height, width)},
        crop_size={"height": height, "width": width},
    )
    return ConversionResult(model=model, processors=[processor])


__all__ = ["build_config", "convert", "convert_state_dict"]
