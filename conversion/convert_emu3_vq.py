"""Convert the released Emu3 vision tokenizer (`BAAI/Emu3-VisionTokenizer`, baaivision/Emu3) into
`Emu3VisionTokenizer` (transformers' `Emu3VQVAE` weights layout, model type `emu3_vqgan`).

Accepted SOURCE layouts: the hub folder (`config.json` with `ch`, `ch_mult`, `z_channels`, ... + `model.safetensors`,
optionally `preprocessor_config.json`), or a single checkpoint file (`--config` optional: every size is read from
tensor shapes and only cross-checked against the config).

The key mapping is the one of transformers' `convert_emu3_weights_to_hf.py`: the 1x1-conv attention projections
become linear layers (`q/k/v/proj_out` -> `q_proj/k_proj/v_proj/out_proj`), attention norms move next to their block
(`attn.N.norm` -> `attn_norms.N`, `mid.attn_1.norm` -> `middle_block.attn_norm`), and `down/up/mid` become
`down_block.down/up_block.up/middle_block`.
"""

import math
from pathlib import Path

from transformers import Emu3VQVAEConfig

from ..modeling.modeling_emu3 import Emu3VisionTokenizer
from ..processing.image_processing_emu3 import Emu3VisionTokenizerImageProcessor
from ..processing.video_processing_emu3 import Emu3VideoProcessor
from .utils import (
    ConversionError,
    ConversionResult,
    find_checkpoint_file,
    load_checkpoint,
    load_config_file,
    load_into_model,
    logger,
    rename_state_dict,
)


_ATTN = r"(q|k|v|proj_out)"
# fmt: off
ORIGINAL_TO_CONVERTED_KEY_MAPPING = [
    (r"(encoder|decoder)\.mid\.attn_1\.norm\.(.+)",                    r"\1.middle_block.attn_norm.\2"),
    (r"(encoder|decoder)\.mid\.attn_1\." + _ATTN + r"\.(weight|bias)", r"\1.middle_block.attn_1.\2.\3"),
    (r"(encoder|decoder)\.mid\.(block_[12]\..+)",                      r"\1.middle_block.\2"),
    (r"encoder\.down\.(\d+)\.attn\.(\d+)\.norm\.(.+)",                  r"encoder.down_block.down.\1.attn_norms.\2.\3"),
    (r"encoder\.down\.(\d+)\.attn\.(\d+)\." + _ATTN + r"\.(weight|bias)", r"encoder.down_block.down.\1.attn.\2.\3.\4"),
    (r"encoder\.down\.(\d+)\.((block|downsample)\..+)",                r"encoder.down_block.down.\1.\2"),
    (r"decoder\.up\.(\d+)\.attn\.(\d+)\.norm\.(.+)",                    r"decoder.up_block.up.\1.attn_norms.\2.\3"),
    (r"decoder\.up\.(\d+)\.attn\.(\d+)\." + _ATTN + r"\.(weight|bias)", r"decoder.up_block.up.\1.attn.\2.\3.\4"),
    (r"decoder\.up\.(\d+)\.((block|upsample)\..+)",                    r"decoder.up_block.up.\1.\2"),
    (r"((encoder|decoder)\.(conv_in|conv_out|norm_out|time_conv|time_res_stack)\..+)", r"\1"),
    (r"((quant_conv|post_quant_conv|quantize)\..+)",                   r"\1"),
]
# fmt: on
_PROJECTION_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "proj_out": "out_proj"}
# original config field -> Emu3VQVAEConfig field, for the cross-check against the shapes
_CONFIG_FIELDS = {
    "codebook_size": "codebook_size", "embed_dim": "embed_dim", "z_channels": "latent_channels",
    "double_z": "double_latent", "in_channels": "in_channels", "out_channels": "out_channels",
    "temporal_downsample_factor": "temporal_downsample_factor", "ch": "base_channels",
    "ch_mult": "channel_multiplier", "num_res_blocks": "num_res_blocks", "attn_resolutions": "attn_resolutions",
}


def _require(state_dict: dict, key: str):
    if key not in state_dict:
        raise ConversionError(f"the checkpoint has no tensor {key!r}; is it an Emu3 vision tokenizer checkpoint?")
    return state_dict[key]


def _indices(state_dict: dict, prefix: str) -> list[int]:
    """Sorted distinct integers that follow ``prefix`` in the keys (``encoder.down.`` -> levels)."""
    return sorted({int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)})


def build_config(state_dict: dict, original: dict | None) -> Emu3VQVAEConfig:
    """An `Emu3VQVAEConfig` from tensor shapes, cross-checked against the original `config.json` when given."""
    codebook = _require(state_dict, "quantize.embedding.weight")
    conv_in = _require(state_dict, "encoder.conv_in.weight")
    base_channels, in_channels = conv_in.shape[:2]
    levels = _indices(state_dict, "encoder.down.")
    if not levels or levels != list(range(len(levels))):
        raise ConversionError(f"encoder levels encoder.down.N are missing or not numbered 0..n-1: {levels}")
    level_channels = [_require(state_dict, f"encoder.down.{i}.block.0.conv1.weight").shape[0] for i in levels]
    if any(c % base_channels for c in level_channels):
        raise ConversionError(f"level widths {level_channels} are not multiples of the base width {base_channels}.")
    latent_out = _require(state_dict, "encoder.conv_out.weight").shape[0]
    latent_channels = _require(state_dict, "decoder.conv_in.weight").shape[1]
    attn_levels = [i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in state_dict]
    # the middle block's attention width; attention at a narrower level keeps its own width (see
    # `Emu3VisionTokenizer._fit_attention_widths`)
    hidden_size = _require(state_dict, "encoder.mid.attn_1.q.weight").shape[0]
    kwargs = dict(
        codebook_size=codebook.shape[0], embed_dim=codebook.shape[1], latent_channels=latent_channels,
        double_latent=latent_out == 2 * latent_channels, in_channels=in_channels,
        out_channels=_require(state_dict, "decoder.conv_out.weight").shape[0],
        temporal_downsample_factor=2 ** len(_indices(state_dict, "encoder.time_conv.")),
        base_channels=base_channels, channel_multiplier=[c // base_channels for c in level_channels],
        num_res_blocks=len(_indices(state_dict, "encoder.down.0.block.")), attn_resolutions=attn_levels,
        hidden_size=hidden_size, num_attention_heads=1,
    )
    if kwargs["embed_dim"] != latent_channels:
        raise ConversionError(
            f"embed_dim {kwargs['embed_dim']} != z_channels {latent_channels}: the decoder runs the codebook vectors "
            "through the same temporal layers as the latents, so the release requires them equal."
        )
    if original:
        original = dict(original)
        if "attn_resolutions" in original:
            # the original builds attention only at levels that exist: [3] with 3 levels means none
            original["attn_resolutions"] = sorted({i for i in original["attn_resolutions"] if 0 <= i < len(levels)})
        for source_name, target_name in _CONFIG_FIELDS.items():
            if source_name in original and _normalise(original[source_name]) != _normalise(kwargs[target_name]):
                raise ConversionError(
                    f"config.json says {source_name}={original[source_name]!r} but the weights imply "
                    f"{kwargs[target_name]!r}."
                )
    try:
        return Emu3VQVAEConfig(**kwargs)
    except Exception as error:
        raise ConversionError(f"the checkpoint describes an invalid Emu3VQVAE configuration: {error}") from error


def _normalise(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def convert_state_dict(state_dict: dict) -> tuple[dict, list[str]]:
    renamed, unmapped, _ = rename_state_dict(state_dict, ORIGINAL_TO_CONVERTED_KEY_MAPPING)
    converted = {}
    for key, tensor in renamed.items():
        parts = key.split(".")
        if len(parts) >= 2 and parts[-2] in _PROJECTION_NAMES and (".attn." in key or ".attn_1." in key):
            parts[-2] = _PROJECTION_NAMES[parts[-2]]
            key = ".".join(parts)
            if tensor.ndim == 4:  # 1x1 convolution -> linear
                tensor = tensor[:, :, 0, 0]
        converted[key] = tensor
    return converted, unmapped


def _read_source(source, config_file) -> tuple[dict, dict | None, dict | None]:
    source = Path(source)
    checkpoint = find_checkpoint_file(source, preferred=("model.safetensors", "pytorch_model.bin"))
    folder = source if source.is_dir() else source.parent
    if config_file is None and (folder / "config.json").is_file():
        config_file = folder / "config.json"
    original = load_config_file(config_file) if config_file is not None else None
    preprocessor = folder / "preprocessor_config.json"
    logger.info("reading %s", checkpoint)
    return load_checkpoint(checkpoint), original, load_config_file(preprocessor) if preprocessor.is_file() else None


def build_processors(config: Emu3VQVAEConfig, preprocessor: dict | None) -> list:
    """The image and video processors with the release's resize budget and normalisation."""
    preprocessor = preprocessor or {}
    factor = 2 ** (len(config.channel_multiplier) - 1)
    if preprocessor.get("spatial_factor", factor) != factor:
        raise ConversionError(
            f"preprocessor_config.json says spatial_factor={preprocessor['spatial_factor']} but the model "
            f"downsamples by {factor}."
        )
    kwargs = dict(
        spatial_factor=factor,
        min_pixels=preprocessor.get("min_pixels", 512 * 512),
        max_pixels=preprocessor.get("max_pixels", 1024 * 1024),
        image_mean=preprocessor.get("image_mean", [0.5, 0.5, 0.5]),
        image_std=preprocessor.get("image_std", [0.5, 0.5, 0.5]),
        rescale_factor=preprocessor.get("rescale_factor", 1 / 255),
    )
    if not math.isclose(kwargs["rescale_factor"], 1 / 255):
        logger.warning("unusual rescale_factor %s kept from preprocessor_config.json", kwargs["rescale_factor"])
    return [Emu3VisionTokenizerImageProcessor(**kwargs),
            Emu3VideoProcessor(**kwargs, temporal_factor=config.temporal_downsample_factor)]


def convert(source, config_file=None, presets_file=None) -> ConversionResult:
    state_dict, original, preprocessor = _read_source(source, config_file)
    config = build_config(state_dict, original)
    logger.info("building Emu3VisionTokenizer (codebook %s, channels %s x %s)", config.codebook_size,
                config.base_channels, list(config.channel_multiplier))
    model = Emu3VisionTokenizer(config).eval()
    converted, unmapped = convert_state_dict(state_dict)
    load_into_model(model, converted, unmapped)
    notes = []
    if original and float(original.get("dropout", 0.0)):
        notes.append(f"original resnet dropout {original['dropout']} is training-only and not part of Emu3VQVAE")
    return ConversionResult(model=model, processors=build_processors(config, preprocessor), notes=notes)
