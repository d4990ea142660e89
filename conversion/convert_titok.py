"""Convert released TiTok / TA-TiTok tokenizers (bytedance/1d-tokenizer) into `TiTokModel`.

Accepted SOURCE layouts:
  * the hub-mixin folder: `config.json` (OmegaConf dump with `model.vq_model` and `dataset.preprocessing`) +
    `model.safetensors`;
  * a `torch.save(state_dict)` `.bin` file with its inference yaml (`--config`, or a single `*.yaml` next to it).

Sizes come from tensor shapes; head counts come from the ViT presets named in the config (`small`/`base`/`large`,
more through `--preset-overrides`).
"""

import math
from pathlib import Path


from ..modeling.configuration_titok import TITOK_VIT_PRESETS, TiTokConfig
from ..modeling.modeling_titok import TiTokModel
from ..processing.image_processing_common import center_crop_image_processor
from ..processing.image_processing_titok import TiTokImageProcessor
from .utils import (
    ConversionError,
    ConversionResult,
    HubFiles,
    config_disagreements,
    count_layers,
    find_checkpoint_file,
    get_preset,
    load_checkpoint,
    load_config_file,
    load_into_model,
    load_presets,
    logger,
    rename_state_dict,
    require_tensor,
    split_fused_qkv,
)


# fmt: off
ORIGINAL_TO_CONVERTED_KEY_MAPPING = [
    (r"latent_tokens",                                       r"encoder.embeddings.latent_tokens"),
    (r"encoder\.patch_embed\.(weight|bias)",                 r"encoder.embeddings.patch_embedding.\1"),
    (r"(encoder|decoder)\.class_embedding",                  r"\1.embeddings.class_embedding"),
    (r"(encoder|decoder)\.positional_embedding",             r"\1.embeddings.position_embedding"),
    (r"(encoder|decoder)\.latent_token_positional_embedding", r"\1.embeddings.latent_position_embedding"),
    (r"(encoder|decoder)\.ln_pre\.(weight|bias)",            r"\1.pre_layernorm.\2"),
    (r"(encoder|decoder)\.ln_post\.(weight|bias)",           r"\1.post_layernorm.\2"),
    (r"(encoder|decoder)\.transformer\.(\d+)\.ln_1\.(weight|bias)", r"\1.layers.\2.norm1.\3"),
    (r"(encoder|decoder)\.transformer\.(\d+)\.ln_2\.(weight|bias)", r"\1.layers.\2.norm2.\3"),
    (r"(encoder|decoder)\.transformer\.(\d+)\.attn\.in_proj_(weight|bias)", r"\1.layers.\2.self_attn.qkv.\3"),
    (r"(encoder|decoder)\.transformer\.(\d+)\.attn\.out_proj\.(weight|bias)", r"\1.layers.\2.self_attn.out_proj.\3"),
    (r"(encoder|decoder)\.transformer\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"\1.layers.\2.mlp.fc1.\3"),
    (r"(encoder|decoder)\.transformer\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"\1.layers.\2.mlp.fc2.\3"),
    (r"encoder\.conv_out\.(weight|bias)",                    r"encoder.projection.\1"),
    (r"decoder\.decoder_embed\.(weight|bias)",               r"decoder.embeddings.token_projection.\1"),
    (r"decoder\.mask_token",                                 r"decoder.embeddings.mask_token"),
    (r"decoder\.text_guidance_proj\.(weight|bias)",          r"decoder.embeddings.text_projection.\1"),
    (r"decoder\.text_guidance_positional_embedding",         r"decoder.embeddings.text_position_embedding"),
    (r"quantize\.embedding\.weight",                         r"quantizer.embedding"),
    (r"pixel_quantize\.embedding\.weight",                   r"pixel_codebook.embedding"),
    (r"(pixel_decoder\..+)",                                 r"\1"),
]
LEGACY_HEAD_MAPPING = [
    (r"decoder\.ffn\.0\.(weight|bias)",                      r"decoder.head.fc1.\1"),
    (r"decoder\.ffn\.2\.(weight|bias)",                      r"decoder.head.fc2.\1"),
]
PIXEL_HEAD_MAPPING = [
    (r"decoder\.ffn\.0\.(weight|bias)",                      r"decoder.head.projection.\1"),
    (r"decoder\.conv_out\.(weight|bias)",                    r"decoder.head.conv_out.\1"),
]
# training-only state: the clustering-VQ usage statistics of TA-TiTok
DROPPED_KEYS = [r"quantize\.embed_prob"]
# fmt: on

# what `vistok-convert titok <Hub id or variant>` downloads: the PyTorchModelHubMixin config (or the training YAML)
# and one weights file
HUB_FILES = HubFiles(
    required=(("config.json", "*.yaml"), ("model.safetensors", "pytorch_model.bin", "*.safetensors", "*.bin")),
)


def _read_source(source: Path, config_file) -> tuple[dict, dict]:
    source = Path(source)
    checkpoint = find_checkpoint_file(source, preferred=("model.safetensors", "pytorch_model.bin"))
    if config_file is None:
        folder = source if source.is_dir() else source.parent
        candidates = [folder / "config.json"] if (folder / "config.json").is_file() else sorted(folder.glob("*.yaml"))
        if len(candidates) != 1:
            raise ConversionError(
                f"could not find the original config next to {checkpoint}: expected config.json or one *.yaml in "
                f"{folder}; pass it with --config."
            )
        config_file = candidates[0]
    logger.info("reading %s and %s", checkpoint, config_file)
    return load_checkpoint(checkpoint), load_config_file(config_file)


def build_config(state_dict: dict, original: dict, presets: dict) -> tuple[TiTokConfig, list[str]]:
    """Derives a `TiTokConfig` from tensor shapes, the original config and the ViT presets; returns it with notes
    on config values that the weights contradict."""
    vq = original.get("model", {}).get("vq_model")
    if vq is None:
        raise ConversionError("the original config has no `model.vq_model` section; is it a TiTok config?")
    patch_weight = require_tensor(state_dict, "encoder.patch_embed.weight", "TiTok")
    enc_width, num_channels, patch_size = patch_weight.shape[0], patch_weight.shape[1], patch_weight.shape[2]
    grid = math.isqrt(require_tensor(state_dict, "encoder.positional_embedding", "TiTok").shape[0] - 1)
    image_size = grid * patch_size
    crop_size = original.get("dataset", {}).get("preprocessing", {}).get("crop_size", image_size)
    # the original derives the grid as crop_size // patch_size: a crop up to patch_size - 1 pixels larger feeds the
    # same grid (the convolution drops the remainder) and the decoder returns grid * patch pixels
    if crop_size // patch_size != grid:
        raise ConversionError(f"config crop_size {crop_size} does not match the weights' {grid}x{grid} grid of "
                              f"{patch_size}-pixel patches ({image_size}..{image_size + patch_size - 1} px).")
    num_tokens, token_channels = require_tensor(state_dict, "latent_tokens", "TiTok").shape[0], state_dict["encoder.conv_out.weight"].shape[0]
    quantize_mode = vq.get("quantize_mode", "vq")
    is_vq = "quantize.embedding.weight" in state_dict
    if (quantize_mode == "vq") != is_vq:
        raise ConversionError(f"config says quantize_mode={quantize_mode!r} but the checkpoint "
                              f"{'has' if is_vq else 'has no'} a VQ codebook (quantize.embedding.weight).")
    token_size = token_channels if is_vq else token_channels // 2
    is_legacy = bool(vq.get("is_legacy", True))
    if is_legacy != ("decoder.ffn.2.weight" in state_dict):
        raise ConversionError(f"is_legacy={is_legacy} in the config does not match the decoder head in the weights.")
    use_pixel_decoder = any(k.startswith("pixel_decoder.") for k in state_dict)
    if is_legacy and not use_pixel_decoder:
        raise ConversionError("this is a stage-1 legacy checkpoint without the MaskGIT-VQGAN pixel decoder "
                              "(pixel_decoder.*): it cannot produce pixels on its own.")

    dec_width = require_tensor(state_dict, "decoder.decoder_embed.weight", "TiTok").shape[0]
    dec_grid = math.isqrt(require_tensor(state_dict, "decoder.positional_embedding", "TiTok").shape[0] - 1)
    if dec_grid == 0 or image_size % dec_grid:
        raise ConversionError(f"decoder grid {dec_grid} does not divide the image size {image_size}.")
    enc_preset = get_preset(presets, vq.get("vit_enc_model_size", "large"), ("num_attention_heads",))
    dec_preset = get_preset(presets, vq.get("vit_dec_model_size", "large"), ("num_attention_heads",))
    enc_layers = count_layers(state_dict, "encoder.transformer.")
    dec_layers = count_layers(state_dict, "decoder.transformer.")
    for name, preset, width, layers in (("encoder", enc_preset, enc_width, enc_layers),
                                        ("decoder", dec_preset, dec_width, dec_layers)):
        for field, value in (("hidden_size", width), ("num_hidden_layers", layers)):
            if field in preset and preset[field] != value:
                raise ConversionError(f"{name} preset says {field}={preset[field]} but the weights have {value}.")
    mlp_ratio = state_dict["encoder.transformer.0.mlp.c_fc.weight"].shape[0] / enc_width

    kwargs = dict(
        image_size=image_size, num_channels=num_channels, patch_size=patch_size,
        decoder_patch_size=image_size // dec_grid, num_latent_tokens=num_tokens, token_size=token_size,
        quantize_mode="vq" if is_vq else "vae",
        codebook_size=state_dict["quantize.embedding.weight"].shape[0] if is_vq else None,
        use_l2_norm=bool(vq.get("use_l2_norm", False)), commitment_cost=float(vq.get("commitment_cost", 0.25)),
        encoder_hidden_size=enc_width, encoder_num_hidden_layers=enc_layers,
        encoder_num_attention_heads=enc_preset["num_attention_heads"],
        decoder_hidden_size=dec_width, decoder_num_hidden_layers=dec_layers,
        decoder_num_attention_heads=dec_preset["num_attention_heads"],
        mlp_ratio=mlp_ratio, is_legacy=is_legacy, use_pixel_decoder=use_pixel_decoder,
    )
    if is_legacy:
        kwargs["proxy_codebook_size"] = state_dict["decoder.ffn.2.weight"].shape[0]
    if use_pixel_decoder:
        num_levels = len({k.split(".")[2] for k in state_dict if k.startswith("pixel_decoder.up.")})
        level_channels = [require_tensor(state_dict, f"pixel_decoder.up.{i}.block.0.conv1.weight", "TiTok").shape[0]
                          for i in range(num_levels)]
        hidden = math.gcd(*level_channels)
        kwargs.update(
            pixel_decoder_hidden_channels=hidden,
            pixel_decoder_channel_mult=[c // hidden for c in level_channels],
            pixel_decoder_num_res_blocks=len({k.split(".")[4] for k in state_dict if k.startswith("pixel_decoder.up.0.block.")}),
            pixel_decoder_z_channels=require_tensor(state_dict, "pixel_decoder.conv_in.weight", "TiTok").shape[1],
        )
        if require_tensor(state_dict, "pixel_quantize.embedding.weight", "TiTok").shape[0] != kwargs["proxy_codebook_size"]:
            raise ConversionError("the legacy head and the MaskGIT-VQGAN codebook disagree on the number of codes.")
    if "decoder.text_guidance_proj.weight" in state_dict:
        kwargs.update(
            use_text_guidance=True,
            text_embed_dim=state_dict["decoder.text_guidance_proj.weight"].shape[1],
            text_context_length=require_tensor(state_dict, "decoder.text_guidance_positional_embedding", "TiTok").shape[0],
        )
    notes = config_disagreements(
        vq, {k: kwargs[k] for k in ("num_latent_tokens", "codebook_size", "token_size") if kwargs[k] is not None}
    )
    try:
        return TiTokConfig(**kwargs), notes
    except Exception as error:
        raise ConversionError(f"the checkpoint describes an invalid TiTok configuration: {error}") from error


def convert_state_dict(state_dict: dict, model: TiTokModel) -> dict:
    head_rules = LEGACY_HEAD_MAPPING if model.config.is_legacy else PIXEL_HEAD_MAPPING
    renamed, unmapped, dropped = rename_state_dict(state_dict, ORIGINAL_TO_CONVERTED_KEY_MAPPING + head_rules, DROPPED_KEYS)
    if dropped:
        logger.info("dropping training-only tensors: %s", dropped)
    converted = {}
    target = model.state_dict()
    for key, tensor in split_fused_qkv(renamed, "qkv", ("q_proj", "k_proj", "v_proj")).items():
        if key in target and tensor.shape != target[key].shape and tensor.numel() == target[key].numel():
            # 1x1 convolutions become linear layers; the [1, 1, W] mask token loses its leading dims
            tensor = tensor.reshape(target[key].shape)
        converted[key] = tensor
    return converted, unmapped


def looks_like(keys: set[str]) -> bool:
    """Whether a checkpoint with these tensor names is an original TiTok release (key signature)."""
    return "latent_tokens" in keys and any(key.startswith("encoder.transformer.") for key in keys)


def convert(source, config_file=None, presets_file=None) -> ConversionResult:
    state_dict, original = _read_source(source, config_file)
    presets = load_presets(TITOK_VIT_PRESETS, presets_file)
    config, notes = build_config(state_dict, original, presets)
    crop_size = original.get("dataset", {}).get("preprocessing", {}).get("crop_size", config.image_size)
    logger.info("building TiTokModel (%s tokens, %s)", config.num_latent_tokens, config.quantize_mode)
    model = TiTokModel(config).eval()
    converted, unmapped = convert_state_dict(state_dict, model)
    load_into_model(model, converted, unmapped, source=state_dict)
    # preprocessing crops what the original crops; the model encodes that size (extra pixels beyond the grid unused)
    processor = center_crop_image_processor(TiTokImageProcessor, crop_size)
    return ConversionResult(model=model, processors=[processor], notes=notes)
