"""Convert an original MAETok checkpoint (Hhhhhhao/continuous_tokenizer) into `MAETokModel`.

SOURCE is a directory written by the original `PyTorchModelHubMixin` (`config.json` = flat `ModelArgs`,
`model.safetensors`), i.e. the `MAETok/maetok-b-128*` hub layout, or a single checkpoint file with `--config`.
Both the inference `AEModel` layout and the training `MaskAEModel` layout are accepted: the auxiliary HOG / DINOv2 /
SigLIP decoders are kept when present; the frozen teachers (`repa_model`, `clip_model`), the REPA projection and the
HOG buffers are dropped.

Sizes come from tensor shapes; only the attention head counts come from the timm model names of the config
(`MAETOK_VIT_PRESETS`, extendable with `--preset-overrides`).
"""

import math
from pathlib import Path

import torch

from ..modeling.configuration_maetok import MAETOK_VIT_PRESETS, MAETokConfig
from ..modeling.modeling_maetok import MAETokModel
from ..processing.image_processing_common import center_crop_image_processor
from ..processing.image_processing_maetok import MAETokImageProcessor
from .utils import (
    ConversionError,
    ConversionResult,
    HubFiles,
    count_layers,
    find_checkpoint_file,
    get_preset,
    load_checkpoint,
    load_config_file,
    load_into_model,
    load_presets,
    rename_state_dict,
    require_tensor,
    split_fused_qkv,
)


# original prefix of each decoder -> vistok module, and the names of its input projection and head
DECODERS = {
    "decoder": ("decoder", "post_quant_conv", r"decoder\.to_pixel\.model"),
    "decoder_hog": ("hog_decoder", "post_quant_conv_hog", "to_pixel_hog"),
    "decoder_dino": ("dino_decoder", "post_quant_conv_dino", "to_pixel_dino"),
    "decoder_clip": ("siglip_decoder", "post_quant_conv_clip", "to_pixel_clip"),
}
AUX_FLAGS = {"decoder_hog": "use_hog_decoder", "decoder_dino": "use_dino_decoder", "decoder_clip": "use_siglip_decoder"}

# training-only parts of MaskAEModel checkpoints and recomputable buffers
DROPPED = [
    r"repa_model\..*",
    r"clip_model\..*",
    r"projection\.\d+\.(weight|bias)",
    r"hog_generator\..*",
    r"encoder\.freqs_t_[xy]",
    r"encoder\.model\.head\..*",
]


def _rules() -> tuple[list[tuple[str, str]], list[str]]:
    block = r"\.model\.blocks\.(\d+)\."
    rules = [
        (r"encoder\.latent_tokens", "encoder.embeddings.latent_tokens"),
        (r"encoder\.latent_pos_embed", "encoder.embeddings.latent_position_embedding"),
        (r"encoder\.mask_token", "encoder.embeddings.mask_token"),
        (r"encoder\.freqs", "encoder.rotary_emb.freqs"),
        (r"encoder\.model\.cls_token", "encoder.embeddings.class_embedding"),
        (r"encoder\.model\.pos_embed", "encoder.embeddings.position_embedding"),
        (r"encoder\.model\.patch_embed\.proj\.(weight|bias)", r"encoder.embeddings.patch_embedding.\1"),
        (r"encoder" + block + r"norm([12])\.(weight|bias)", r"encoder.layers.\1.norm\2.\3"),
        (r"encoder" + block + r"attn\.([qkv])\.(weight|bias)", r"encoder.layers.\1.self_attn.\2_proj.\3"),
        (r"encoder" + block + r"attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.out_proj.\2"),
        (r"encoder" + block + r"mlp\.(fc[12])\.(weight|bias)", r"encoder.layers.\1.mlp.\2.\3"),
        (r"encoder" + block + r"ls([12])\.gamma", r"encoder.layers.\1.ls\2.lambda1"),
        (r"encoder\.model\.norm\.(weight|bias)", r"encoder.post_layernorm.\1"),
        (r"quant_conv\.(weight|bias)", r"quant_proj.\1"),
    ]
    dropped = list(DROPPED)
    for source, (target, projection, head) in DECODERS.items():
        rules += [
            (projection + r"\.(weight|bias)", target + r".embeddings.token_projection.\1"),
            (head + r"\.(weight|bias)", target + r".head.proj.\1"),
            (source + r"\.mask_token", target + ".embeddings.mask_token"),
            (source + r"\.latent_pos_embed", target + ".embeddings.latent_position_embedding"),
            (source + r"\.freqs", target + ".rotary_emb.freqs"),
            (source + r"\.model\.cls_token", target + ".embeddings.class_embedding"),
            (source + block + r"attn\.([qkv])\.(weight|bias)", target + r".layers.\1.self_attn.\2_proj.\3"),
            (source + block + r"attn\.proj\.(weight|bias)", target + r".layers.\1.self_attn.out_proj.\2"),
            (source + block + r"mlp\.(fc[12])\.(weight|bias)", target + r".layers.\1.mlp.\2.\3"),
            (source + block + r"adaLN_modulation\.1\.(weight|bias)", target + r".layers.\1.modulation.proj.\2"),
            (source + r"\.model\.norm\.adaLN_modulation\.1\.(weight|bias)", target + r".final_norm.modulation.proj.\1"),
        ]
        # a decoder starts from mask tokens: its ViT's patch embedding and absolute positions are never used
        dropped += [
            source + r"\.freqs_t_[xy]",
            source + r"\.model\.(pos_embed|patch_embed\..*|head\..*)",
        ]
    return rules, dropped


def _preset_name(name: str) -> str:
    # timm pretrained tags (".lvd142m") do not change the architecture
    return str(name).split(".")[0]


def _vit_size(state_dict, prefix, width_key, model_name, presets, role) -> dict:
    width = require_tensor(state_dict, width_key, "MAETok", f"{role} width").shape[-1]
    layers = count_layers(state_dict, f"{prefix}.model.blocks.")
    preset = get_preset(presets, _preset_name(model_name), ("num_attention_heads",))
    for field, value in (("hidden_size", width), ("num_hidden_layers", layers)):
        if field in preset and preset[field] != value:
            raise ConversionError(
                f"{role} model {model_name!r}: the weights have {field}={value} but the preset says {preset[field]}; "
                "fix the preset with --preset-overrides."
            )
    freqs = require_tensor(state_dict, f"{prefix}.freqs", "MAETok", "learned mixed-RoPE frequencies")
    if tuple(freqs.shape) != (2, layers, width // 2):
        raise ConversionError(f"{prefix}.freqs has shape {tuple(freqs.shape)}, expected (2, {layers}, {width // 2}).")
    return {"hidden_size": width, "num_layers": layers, "num_heads": preset["num_attention_heads"]}


def _mlp_ratio(state_dict: dict, prefix: str, width: int) -> float:
    return require_tensor(state_dict, f"{prefix}.model.blocks.0.mlp.fc1.weight", "MAETok", "MLP").shape[0] / width


def build_config(original: dict, state_dict: dict[str, torch.Tensor], presets: dict) -> tuple[MAETokConfig, list[str]]:
    """MAETokConfig from the original `ModelArgs` dict and the checkpoint's tensor shapes."""
    notes = []
    if original.get("enc_type", "vit") != "vit" or original.get("dec_type", "vit") != "vit":
        raise ConversionError("only ViT encoders and decoders (enc_type/dec_type 'vit', as in MAETok) are supported.")
    if "encoder.freqs" not in state_dict or "decoder.model.blocks.0.adaLN_modulation.1.weight" not in state_dict:
        raise ConversionError(
            "not a MAETok checkpoint: MAETok has learned mixed-RoPE frequencies (encoder.freqs) and a MoVQ decoder "
            "(decoder.model.blocks.*.adaLN_modulation); other continuous_tokenizer models are not supported."
        )
    encoder = _vit_size(state_dict, "encoder", "encoder.model.cls_token", original.get("encoder_model"), presets,
                        "encoder")
    decoder = _vit_size(state_dict, "decoder", "decoder.mask_token", original.get("decoder_model"), presets,
                        "decoder")
    patch_weight = require_tensor(state_dict, "encoder.model.patch_embed.proj.weight", "MAETok", "patch embedding")
    num_channels, patch_size = patch_weight.shape[1], patch_weight.shape[-1]
    positions = require_tensor(state_dict, "encoder.model.pos_embed", "MAETok", "absolute positions").shape[1] - 1
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise ConversionError(f"encoder.model.pos_embed has {positions} patch positions, not a square grid.")
    image_size = grid * patch_size
    if original.get("image_size", image_size) != image_size:
        raise ConversionError(
            f"config image_size {original['image_size']} disagrees with the weights ({grid}x{grid} patches of "
            f"{patch_size} px = {image_size} px)."
        )
    pixel_out = require_tensor(state_dict, "decoder.to_pixel.model.weight", "MAETok", "linear pixel head (to_pixel 'linear')").shape[0]
    decoder_patch_size = math.isqrt(pixel_out // num_channels)
    if decoder_patch_size**2 * num_channels != pixel_out:
        raise ConversionError(f"decoder.to_pixel.model outputs {pixel_out} values, not {num_channels} x p x p.")
    quant = require_tensor(state_dict, "quant_conv.weight", "MAETok", "latent projection")
    latent_tokens = require_tensor(state_dict, "encoder.latent_tokens", "MAETok", "latent tokens")
    mlp_ratio = _mlp_ratio(state_dict, "encoder", encoder["hidden_size"])
    has_mask_token = "encoder.mask_token" in state_dict
    mask_min = float(original.get("enc_token_drop", 0.0))
    mask_max = float(original.get("enc_token_drop_max", 0.6))
    if not has_mask_token:
        mask_min = mask_max = 0.0
    elif mask_min <= 0:
        notes.append("the checkpoint has an encoder mask token but enc_token_drop is 0; masking stays enabled.")
    fields = {
        "image_size": image_size,
        "num_channels": num_channels,
        "patch_size": patch_size,
        "decoder_patch_size": decoder_patch_size,
        "num_latent_tokens": latent_tokens.shape[1],
        "latent_dim": quant.shape[0],
        "encoder_hidden_size": encoder["hidden_size"],
        "encoder_num_hidden_layers": encoder["num_layers"],
        "encoder_num_attention_heads": encoder["num_heads"],
        "decoder_hidden_size": decoder["hidden_size"],
        "decoder_num_hidden_layers": decoder["num_layers"],
        "decoder_num_attention_heads": decoder["num_heads"],
        "decoder_use_class_token": "decoder.model.cls_token" in state_dict,
        "mlp_ratio": mlp_ratio,
        "rope_theta": float(original.get("rope_theta", 10.0)),
        "vq_mean": float(original.get("vq_mean", 0.0)),
        "vq_std": float(original.get("vq_std", 1.0)),
        "mask_ratio_min": mask_min,
        "mask_ratio_max": mask_max,
        "aux_loss_on_masked_only": bool(original.get("aux_loss_mask", False)),
    }
    ratios = {"encoder": mlp_ratio, "decoder": _mlp_ratio(state_dict, "decoder", decoder["hidden_size"])}
    aux_sizes = {}
    for source, flag in AUX_FLAGS.items():
        present = any(key.startswith(source + ".") for key in state_dict)
        fields[flag] = present
        if not present:
            continue
        aux_sizes[source] = _vit_size(state_dict, source, f"{source}.mask_token", original.get("aux_dec_model"),
                                      presets, f"auxiliary decoder {source}")
        ratios[source] = _mlp_ratio(state_dict, source, aux_sizes[source]["hidden_size"])
        fields["aux_use_class_token"] = f"{source}.model.cls_token" in state_dict
    if len({tuple(size.items()) for size in aux_sizes.values()}) > 1:
        raise ConversionError(f"the auxiliary decoders differ in size ({aux_sizes}); vistok expects one size.")
    if len(set(ratios.values())) > 1:
        raise ConversionError(f"MLP ratios differ between the transformers ({ratios}); vistok expects one ratio.")
    if aux_sizes:
        size = next(iter(aux_sizes.values()))
        fields.update(aux_hidden_size=size["hidden_size"], aux_num_hidden_layers=size["num_layers"],
                      aux_num_attention_heads=size["num_heads"])
    if fields["use_hog_decoder"]:
        hog_dim = require_tensor(state_dict, "to_pixel_hog.weight", "MAETok", "HOG head").shape[0]
        fields["hog_feature_dim"] = hog_dim
        # the original always uses 9 bins and groups 2x2 cells of 8 px per 16-px patch; for other patch sizes pick
        # the cell size that gives the head's width, so in-package HOG targets match the head
        cells = math.isqrt(hog_dim // (num_channels * 9))
        if cells and num_channels * 9 * cells**2 == hog_dim and decoder_patch_size % cells == 0:
            fields["hog_cell_size"] = decoder_patch_size // cells
            if decoder_patch_size // cells != 8:
                notes.append(f"HOG cell size set to {decoder_patch_size // cells} px to give {hog_dim} values per "
                             f"{decoder_patch_size}-px patch (the releases use 8-px cells on 16-px patches).")
        else:
            notes.append(f"to_pixel_hog predicts {hog_dim} values per patch, which no HOG cell size gives; pass "
                         "`hog_targets` when training.")
    for source, field in (("decoder_dino", "dino_feature_dim"), ("decoder_clip", "siglip_feature_dim")):
        if fields[AUX_FLAGS[source]]:
            fields[field] = require_tensor(state_dict, DECODERS[source][2] + ".weight", "MAETok", "feature head").shape[0]
            aux_positions = require_tensor(state_dict, f"{source}.model.pos_embed", "MAETok", "feature grid").shape[1] - 1
            aux_grid = math.isqrt(aux_positions)
            if aux_grid * aux_grid != aux_positions or image_size % aux_grid:
                raise ConversionError(f"{source}.model.pos_embed does not describe a square patch grid.")
            fields["aux_feature_patch_size"] = image_size // aux_grid
    try:
        config = MAETokConfig(**fields)
    except Exception as error:
        raise ConversionError(f"the checkpoint gives an invalid MAETokConfig: {error}") from error
    return config, notes

# what `vistok-convert maetok <Hub id or variant>` downloads (PyTorchModelHubMixin layout)
HUB_FILES = HubFiles(required=(("config.json",), ("model.safetensors", "pytorch_model.bin")))


def looks_like(keys: set[str]) -> bool:
    """Whether a checkpoint with these tensor names is an original MAETok release (key signature)."""
    return "encoder.latent_tokens" in keys and any(key.startswith("encoder.model.blocks.") for key in keys)


def convert(source, config_file=None, presets_file=None) -> ConversionResult:
    """Converts an original MAETok checkpoint directory (or file + `config_file`) into a `MAETokModel` and its
    image processor."""
    source = Path(source)
    checkpoint = find_checkpoint_file(source, preferred=("model.safetensors", "pytorch_model.bin"))
    if config_file is None:
        if not source.is_dir():
            raise ConversionError("a single checkpoint file needs --config pointing to the original config.json.")
        config_file = source / "config.json"
    original = load_config_file(config_file)
    # hub configs of PyTorchModelHubMixin models may nest the ModelArgs under "config"
    if isinstance(original.get("config"), dict):
        original = original["config"]
    presets = load_presets(MAETOK_VIT_PRESETS, presets_file)
    state_dict = load_checkpoint(checkpoint)
    config, notes = build_config(original, state_dict, presets)
    rules, dropped = _rules()
    renamed, unmapped, dropped_keys = rename_state_dict(split_fused_qkv(state_dict, "qkv", ("q", "k", "v")), rules, dropped)
    model = MAETokModel(config).eval()
    load_into_model(model, renamed, unmapped, source=state_dict)
    if dropped_keys:
        notes.append(f"dropped {len(dropped_keys)} training-only or unused tensors (teachers, HOG buffers, grids).")
    processor = center_crop_image_processor(MAETokImageProcessor, config.image_size)
    return ConversionResult(model=model, processors=[processor], notes=notes)
