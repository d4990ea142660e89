"""Convert released FlexTok tokenizers (apple/ml-flextok, hub repos `EPFL-VILAB/flextok_*`) into `FlexTokModel`.

Accepted SOURCE layouts:
  * the hub folder: Hydra-style `config.json` (`{"vae": ..., "encoder": {"module_dict": ...}, "decoder": ...,
    "regularizer": ..., "flow_matching_noise_module": ..., "pipeline": ...}`) + `model.safetensors` (VAE included),
    optionally with the diffusers VAE folder that `vae.hf_hub_path` names (e.g. a local `vae/` copy of
    `EPFL-VILAB/flextok_vae_c16`);
  * a single `model.safetensors`: the config is read from `--config` or from the file's metadata (where the original
    code stores it as Python-literal strings).

Modules are found by their class (`_target_`), never by their position or name in the config, so key order does not
matter. Sizes come from tensor shapes; head counts from the transformers' `head_dim` (or `num_heads`) in the config.
The VAE architecture comes from the VAE folder's `config.json` when available, otherwise from the tensor shapes with
the released VAE's defaults for what shapes cannot tell (GroupNorm groups, activation).
"""

import ast
import re
from pathlib import Path

from safetensors import safe_open

from ..modeling.configuration_flextok import FLEXTOK_VAE_BASE_CONFIG, FlexTokConfig
from ..modeling.modeling_flextok import FlexTokModel
from ..processing.image_processing_common import center_crop_image_processor
from ..processing.image_processing_flextok import FlexTokImageProcessor
from .utils import (
    ConversionError,
    ConversionResult,
    HubFiles,
    count_layers,
    find_checkpoint_file,
    load_checkpoint,
    load_config_file,
    load_into_model,
    load_presets,
    logger,
    rename_state_dict,
    require_tensor,
)


# diffusers renamed the VAE mid-block attention projections; older state dicts use the left-hand names
LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# `--preset-overrides` fixes what neither the config nor the shapes tell: {"encoder": {"num_attention_heads": ..},
# "decoder": {"num_attention_heads": ..}, "vae": {<AutoencoderKL config fields, e.g. "norm_num_groups">}}
DEFAULT_PRESETS = {"encoder": {}, "decoder": {}, "vae": {}}
# layer-level renames inside a FlexTransformer block
BLOCK_RULES = [
    (r"attn\.wq\.weight", r"self_attn.q_proj.weight"),
    (r"attn\.wk\.weight", r"self_attn.k_proj.weight"),
    (r"attn\.wv\.weight", r"self_attn.v_proj.weight"),
    (r"attn\.proj\.weight", r"self_attn.out_proj.weight"),
    (r"mlp\.(fc1|fc2|fc3)\.weight", r"mlp.\1.weight"),
    (r"adaLN_modulation\.1\.(weight|bias)", r"adaln_modulation.\1"),
]


def _class_name(module_config: dict) -> str:
    return str(module_config.get("_target_", "")).rsplit(".", 1)[-1]


def _modules_of(part: dict, part_name: str) -> dict:
    modules = part.get("module_dict") if isinstance(part, dict) else None
    if not isinstance(modules, dict):
        raise ConversionError(f"the original config has no `{part_name}.module_dict`; is it a FlexTok config?")
    return modules


def _find(modules: dict, class_name: str, part: str, predicate=None, required: bool = True):
    """(name, config) of the single module of `class_name` (matching `predicate`) in a module_dict."""
    found = [(name, cfg) for name, cfg in modules.items()
             if isinstance(cfg, dict) and _class_name(cfg) == class_name and (predicate is None or predicate(cfg))]
    if len(found) > 1:
        raise ConversionError(f"expected one {class_name} in the {part}, found {[n for n, _ in found]}.")
    if not found:
        if required:
            raise ConversionError(f"the {part} config has no {class_name} module; is it a FlexTok config?")
        return None, None
    return found[0]


def _metadata_config(checkpoint: Path) -> dict | None:
    """The config that the original `save_safetensors` writes into the file metadata (one Python literal per key)."""
    if checkpoint.suffix != ".safetensors":
        return None
    with safe_open(str(checkpoint), "pt") as handle:
        metadata = handle.metadata() or {}
    config = {}
    for key, value in metadata.items():
        if key == "_target_" or not value.lstrip().startswith("{"):
            continue
        if len(value) > 1_000_000:
            raise ConversionError(f"refusing to parse a {len(value)}-character metadata entry {key!r}.")
        try:
            config[key] = ast.literal_eval(value)  # literals only; nothing is executed
        except (ValueError, SyntaxError) as error:
            raise ConversionError(f"could not parse the config in the metadata entry {key!r}: {error}") from error
    return config or None


def _read_source(source: Path, config_file) -> tuple[dict, dict, Path]:
    source = Path(source)
    checkpoint = find_checkpoint_file(source, preferred=("model.safetensors",))
    folder = source if source.is_dir() else source.parent
    if config_file is not None:
        original = load_config_file(config_file)
    elif (folder / "config.json").is_file() and "encoder" in load_config_file(folder / "config.json"):
        original = load_config_file(folder / "config.json")
    else:
        original = _metadata_config(checkpoint)
        if original is None:
            raise ConversionError(
                f"no FlexTok config found: expected config.json next to {checkpoint}, a config in its safetensors "
                "metadata, or --config."
            )
    missing = [k for k in ("vae", "encoder", "decoder", "regularizer") if k not in original]
    if missing:
        raise ConversionError(f"the original config lacks the top-level sections {missing}; is it a FlexTok config?")
    logger.info("reading %s", checkpoint)
    return load_checkpoint(checkpoint), original, folder


def _find_vae_folder(folder: Path, vae: dict) -> Path | None:
    candidates = []
    hub_path = vae.get("hf_hub_path")
    if isinstance(hub_path, str) and hub_path:
        candidates += [folder / hub_path, folder / hub_path.rsplit("/", 1)[-1]]
    candidates.append(folder / "vae")
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    return None


# what `vistok-convert flextok <Hub id or variant>` downloads: the tokenizer repo, with a bundled `vae/` folder when it
# has one; otherwise the VAE repo that the config's `vae.hf_hub_path` names (HUB_LINKED_FILES of it)
HUB_FILES = HubFiles(required=(("config.json",), ("model.safetensors",)), optional=("vae/*",))
HUB_LINKED_FILES = HubFiles(required=(("config.json",), ("diffusion_pytorch_model.safetensors", "*.safetensors")))


def hub_linked_repos(folder: Path) -> dict[str, str]:
    """{path inside the release folder: Hub repo id} of the VAE when the downloaded release does not bundle it."""
    try:
        vae = load_config_file(folder / "config.json").get("vae") or {}
    except ConversionError:
        return {}
    hub_path = vae.get("hf_hub_path") if isinstance(vae, dict) else None
    if _find_vae_folder(folder, vae) is not None or not isinstance(hub_path, str) or hub_path.count("/") != 1:
        return {}
    return {hub_path: hub_path}


def _infer_vae_config(vae_state: dict) -> dict:
    """diffusers AutoencoderKL config from the VAE tensor shapes (groups and activation from the released VAE)."""
    try:
        levels = sorted({int(k.split(".")[2]) for k in vae_state if k.startswith("encoder.down_blocks.")})
        channels = [vae_state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in levels]
        layers = len({k.split(".")[4] for k in vae_state if k.startswith("encoder.down_blocks.0.resnets.")})
        latent_channels = vae_state["quant_conv.weight"].shape[0] // 2
        in_channels = vae_state["encoder.conv_in.weight"].shape[1]
        out_channels = vae_state["decoder.conv_out.weight"].shape[0]
    except KeyError as error:
        raise ConversionError(f"cannot infer the VAE architecture: the checkpoint lacks {error}.") from error
    config = dict(FLEXTOK_VAE_BASE_CONFIG)
    config.update(
        block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        layers_per_block=layers,
        latent_channels=latent_channels,
        in_channels=in_channels,
        out_channels=out_channels,
    )
    return config


def _vae_state_dict(state_dict: dict, vae_folder: Path | None) -> tuple[dict, list[str]]:
    """The VAE tensors under their diffusers names (from model.safetensors, else from the VAE folder)."""
    notes = []
    vae_state = {}
    for key, tensor in state_dict.items():
        if key.startswith("vae.vae."):
            name = key[len("vae.vae."):]
            match = re.fullmatch(r"(.*\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)", name)
            if match:
                name = f"{match[1]}{LEGACY_VAE_ATTENTION[match[2]]}.{match[3]}"
            vae_state[name] = tensor
    if not vae_state:
        weights = None if vae_folder is None else find_checkpoint_file(vae_folder)
        if weights is None:
            raise ConversionError("model.safetensors has no VAE tensors (vae.vae.*) and no local VAE folder was found.")
        vae_state = load_checkpoint(weights)
        notes.append(f"VAE weights taken from {weights} (model.safetensors has none)")
    return vae_state, notes


def _heads(transformer: dict, width: int, part: str, presets: dict) -> int:
    preset = presets.get(part, {})
    if "num_attention_heads" in preset:
        return int(preset["num_attention_heads"])
    if transformer.get("num_heads"):
        return int(transformer["num_heads"])
    head_dim = int(transformer.get("head_dim", 64))  # FlexTransformer's default
    if width % head_dim:
        raise ConversionError(f"{part} width {width} is not divisible by head_dim {head_dim}.")
    return width // head_dim


def _check_transformer(transformer: dict, part: str) -> None:
    unsupported = {
        "qk_norm": (transformer.get("qk_norm", True), True),
        "gated_mlp": (transformer.get("gated_mlp", True), True),
    }
    for name, (value, expected) in unsupported.items():
        if value != expected:
            raise ConversionError(f"the {part} transformer uses {name}={value}; only {name}={expected} is supported.")


def _check_packer(packer: dict, first_key: str, part: str, mask_mode: str) -> None:
    if packer.get("mask_mode", "full") != mask_mode:
        raise ConversionError(f"the {part} sequence packer uses mask_mode={packer.get('mask_mode')!r}; FlexTok "
                              f"expects {mask_mode!r}.")
    keys = packer.get("input_list_read_keys", [])
    if len(keys) != 2 or keys[0] != first_key:
        raise ConversionError(f"the {part} packs {keys}; expected [patches ({first_key!r}), registers].")


def build(state_dict: dict, original: dict, folder: Path, presets: dict):
    """Derives the `FlexTokConfig` and the renaming rules; returns (config, rules, vae_state, notes)."""
    notes = []
    vae = original["vae"]
    encoder, decoder = _modules_of(original["encoder"], "encoder"), _modules_of(original["decoder"], "decoder")
    enc, dec = "encoder.module_dict.", "decoder.module_dict."

    # --- VAE
    vae_folder = _find_vae_folder(folder, vae)
    vae_state, vae_notes = _vae_state_dict(state_dict, vae_folder)
    notes += vae_notes
    if vae_folder is not None:
        vae_config = load_config_file(vae_folder / "config.json")
        logger.info("VAE architecture from %s", vae_folder / "config.json")
    else:
        vae_config = _infer_vae_config(vae_state)
        notes.append("VAE architecture inferred from tensor shapes (GroupNorm groups and activation from the release "
                     "unless given with --preset-overrides '{\"vae\": {...}}')")
    vae_config = {k: v for k, v in vae_config.items() if not k.startswith("_")} | presets.get("vae", {})
    if vae.get("latent_channels") not in (None, vae_config.get("latent_channels")):
        raise ConversionError(f"config vae.latent_channels={vae['latent_channels']} but the VAE has "
                              f"{vae_config.get('latent_channels')} latent channels.")
    scaling = vae.get("scaling_factor") or vae_config.get("scaling_factor") or 1.0
    if vae.get("sample_posterior", True):
        notes.append("the original samples the VAE posterior when tokenizing; the converted model takes its mode "
                     "by default (pass encode(sample_posterior=True) for the original behaviour)")

    # --- encoder
    patch_name, patch_cfg = _find(encoder, "PatchEmbedder", "encoder")
    pos_name, _ = _find(encoder, "PositionalEmbeddingAdder", "encoder")
    reg_name, _ = _find(encoder, "Registers1D", "encoder")
    trunk_name, trunk = _find(encoder, "FlexTransformer", "encoder")
    head_name, head_cfg = _find(encoder, "LinearHead", "encoder")
    _, packer = _find(encoder, "BlockWiseSequencePacker", "encoder")
    _check_packer(packer, patch_cfg.get("patches_list_write_key"), "encoder", "causal_last")
    _check_transformer(trunk, "encoder")
    if head_cfg.get("use_mup_readout") or head_cfg.get("adaLN_emb_read_key"):
        raise ConversionError("the encoder head uses a muP readout or adaLN, which FlexTok releases do not.")
    patch_sizes = list(patch_cfg.get("patch_sizes", [2, 2]))
    if len(set(patch_sizes)) != 1:
        raise ConversionError(f"only square patches are supported, got patch_sizes={patch_sizes}.")
    patch_size = patch_sizes[0]
    enc_table = require_tensor(state_dict, f"{enc}{pos_name}.posembs", "FlexTok")
    if enc_table.ndim != 4 or enc_table.shape[0] != 1:
        raise ConversionError(f"expected a [1, D, rows, columns] encoder position table, got {tuple(enc_table.shape)}.")
    grid = tuple(enc_table.shape[-2:])
    enc_width = require_tensor(state_dict, f"{enc}{patch_name}.patch_proj.weight", "FlexTok").shape[0]
    num_registers = require_tensor(state_dict, f"{enc}{reg_name}.registers", "FlexTok").shape[0]
    enc_layers = count_layers(state_dict, f"{enc}{trunk_name}.blocks.")
    num_levels = require_tensor(state_dict, f"{enc}{head_name}.proj.weight", "FlexTok").shape[0]

    # --- regularizer
    regularizer = original["regularizer"]
    if _class_name(regularizer) != "FSQ":
        raise ConversionError(f"only the FSQ regularizer is supported, got {regularizer.get('_target_')!r}.")
    levels = [int(level) for level in regularizer.get("levels", [])]
    if len(levels) != num_levels:
        raise ConversionError(f"FSQ levels {levels} do not match the encoder head's {num_levels} outputs.")

    # --- decoder
    proj_name, proj_cfg = _find(decoder, "LinearLayer", "decoder")
    dec_patch_name, dec_patch_cfg = _find(decoder, "PatchEmbedder", "decoder")
    register_key, patches_key = proj_cfg.get("write_key"), dec_patch_cfg.get("patches_list_write_key")
    reg_pos_name, _ = _find(
        decoder, "PositionalEmbeddingAdder", "decoder", lambda c: c.get("read_key") == register_key, required=False
    )
    dec_pos_name, _ = _find(decoder, "PositionalEmbeddingAdder", "decoder", lambda c: c.get("read_key") == patches_key)
    dropout_name, dropout_cfg = _find(decoder, "MaskedNestedDropout", "decoder")
    null_name, null_cfg = _find(decoder, "LearnedNullCond", "decoder", required=False)
    if null_name is None:
        null_name, null_cfg = _find(decoder, "ZeroNullCond", "decoder")
    time_name, time_cfg = _find(decoder, "TimestepEmbedder", "decoder")
    dec_trunk_name, dec_trunk = _find(decoder, "FlexTransformer", "decoder")
    to_patches_name, to_patches_cfg = _find(decoder, "ToPatchesLinearHead", "decoder")
    _, dec_packer = _find(decoder, "BlockWiseSequencePacker", "decoder")
    _check_packer(dec_packer, patches_key, "decoder", "full")
    _check_transformer(dec_trunk, "decoder")
    if to_patches_cfg.get("use_mup_readout"):
        raise ConversionError("the decoder head uses a muP readout, which FlexTok releases do not.")
    if list(dec_patch_cfg.get("patch_sizes", patch_sizes)) != patch_sizes:
        raise ConversionError("encoder and decoder patch sizes differ; FlexTok uses one patch size.")
    dec_width = require_tensor(state_dict, f"{dec}{proj_name}.proj.weight", "FlexTok").shape[0]
    dec_layers = count_layers(state_dict, f"{dec}{dec_trunk_name}.blocks.")
    adaln_rows = require_tensor(state_dict, f"{dec}{dec_trunk_name}.blocks.0.adaLN_modulation.1.weight", "FlexTok").shape[0]
    if adaln_rows % (6 * dec_width):
        raise ConversionError(f"decoder adaLN projection has {adaln_rows} outputs, not a multiple of 6 x {dec_width}.")
    if reg_pos_name is None:
        # a decoder without register positions equals one whose learned table is zero
        notes.append("the decoder has no register position embedding; it is converted as a zero table")
    else:
        reg_table = require_tensor(state_dict, f"{dec}{reg_pos_name}.posembs", "FlexTok")
        if tuple(reg_table.shape) != (1, 1, dec_width, num_registers):
            raise ConversionError(f"expected a learned register position table of shape (1, 1, {dec_width}, "
                                  f"{num_registers}), got {tuple(reg_table.shape)}.")
    dec_table = require_tensor(state_dict, f"{dec}{dec_pos_name}.posembs", "FlexTok")
    if tuple(dec_table.shape[-2:]) != grid:
        raise ConversionError(
            f"decoder position table {tuple(dec_table.shape)} does not match the encoder's {grid[0]}x{grid[1]} grid."
        )
    repa_layers = dec_trunk.get("intermediate_layers") or []
    noise_module = original.get("flow_matching_noise_module", {})

    downsample = 2 ** (len(vae_config.get("down_block_types", [])) - 1)
    config_kwargs = dict(
        image_size=[side * patch_size * downsample for side in grid],
        num_channels=vae_config.get("in_channels", 3),
        vae_config=vae_config,
        vae_scaling_factor=float(scaling),
        vae_sample_posterior=False,
        patch_size=patch_size,
        num_latent_tokens=num_registers,
        fsq_levels=levels,
        encoder_hidden_size=enc_width,
        encoder_num_hidden_layers=enc_layers,
        encoder_num_attention_heads=_heads(trunk, enc_width, "encoder", presets),
        encoder_intermediate_size=require_tensor(state_dict, f"{enc}{trunk_name}.blocks.0.mlp.fc1.weight", "FlexTok").shape[0],
        decoder_hidden_size=dec_width,
        decoder_num_hidden_layers=dec_layers,
        decoder_num_attention_heads=_heads(dec_trunk, dec_width, "decoder", presets),
        decoder_intermediate_size=require_tensor(state_dict, f"{dec}{dec_trunk_name}.blocks.0.mlp.fc1.weight", "FlexTok").shape[0],
        timestep_embedding_dim=require_tensor(state_dict, f"{dec}{time_name}.mlp.0.weight", "FlexTok").shape[1],
        max_timestep=float(time_cfg.get("max_timestep", 1.0)),
        adaln_expansion=adaln_rows // (6 * dec_width),
        null_condition="learned" if _class_name(null_cfg) == "LearnedNullCond" else "zeros",
        repa_layer_index=int(repa_layers[0]) if repa_layers else None,
        nested_dropout_mode=dropout_cfg.get("size_sampling_mode", "uniform"),
        cfg_dropout_prob=float(null_cfg.get("dropout_prob", 0.0)),
        training_timestep_sampling="logit_normal" if noise_module.get("ln", True) else "uniform",
    )
    if noise_module.get("mode_scale") or noise_module.get("stratisfied"):
        notes.append("training-time timestep sampling options mode_scale/stratisfied are not reproduced")
    try:
        config = FlexTokConfig(**config_kwargs)
    except Exception as error:
        raise ConversionError(f"the checkpoint describes an invalid FlexTok configuration: {error}") from error

    def block_rules(prefix: str, target: str) -> list:
        # the block index is group 1, so the rule's own group moves to 2
        return [
            (rf"{re.escape(prefix)}\.blocks\.(\d+)\.{pattern}", rf"{target}.\1." + replacement.replace(r"\1", r"\2"))
            for pattern, replacement in BLOCK_RULES
        ]

    e, d = re.escape(enc), re.escape(dec)
    rules = [
        (rf"{e}{re.escape(patch_name)}\.patch_proj\.(weight|bias)", r"encoder.embeddings.patch_embedding.\1"),
        (rf"{e}{re.escape(pos_name)}\.posembs", "encoder.embeddings.position_embedding"),
        (rf"{e}{re.escape(reg_name)}\.registers", "encoder.embeddings.register_tokens"),
        *block_rules(enc + trunk_name, "encoder.layers"),
        (rf"{e}{re.escape(head_name)}\.proj\.(weight|bias)", r"encoder.latent_projection.\1"),
        (rf"{d}{re.escape(proj_name)}\.proj\.(weight|bias)", r"decoder.embeddings.token_projection.\1"),
        (rf"{d}{re.escape(dropout_name)}\.dropout_mask_token", "decoder.embeddings.mask_token"),
        *([(rf"{d}{re.escape(reg_pos_name)}\.posembs", "decoder.embeddings.register_position_embedding")]
          if reg_pos_name is not None else []),
        (rf"{d}{re.escape(null_name)}\.nullcond", "decoder.embeddings.null_condition"),
        (rf"{d}{re.escape(dec_patch_name)}\.patch_proj\.(weight|bias)", r"decoder.embeddings.patch_embedding.\1"),
        (rf"{d}{re.escape(dec_pos_name)}\.posembs", "decoder.embeddings.position_embedding"),
        (rf"{d}{re.escape(time_name)}\.mlp\.0\.(weight|bias)", r"decoder.time_embedding.linear_1.\1"),
        (rf"{d}{re.escape(time_name)}\.mlp\.2\.(weight|bias)", r"decoder.time_embedding.linear_2.\1"),
        *block_rules(dec + dec_trunk_name, "decoder.layers"),
        (rf"{d}{re.escape(to_patches_name)}\.adaLN_modulation\.1\.(weight|bias)", r"decoder.head.adaln_modulation.\1"),
        (rf"{d}{re.escape(to_patches_name)}\.proj\.(weight|bias)", r"decoder.head.projection.\1"),
    ]
    return config, rules, vae_state, notes


def convert_state_dict(state_dict: dict, rules: list, vae_state: dict, num_registers: int) -> tuple[dict, list]:
    flextok_state = {k: v for k, v in state_dict.items() if not k.startswith("vae.vae.")}
    renamed, unmapped, _ = rename_state_dict(flextok_state, rules)
    for key in ("encoder.embeddings.position_embedding", "decoder.embeddings.position_embedding"):
        if key in renamed:  # [1, D, n, n] -> [n * n, D], row-major like the patch sequence
            renamed[key] = renamed[key][0].flatten(1).transpose(0, 1).contiguous()
    key = "decoder.embeddings.register_position_embedding"
    if key in renamed:
        renamed[key] = renamed[key][0, 0].transpose(0, 1).contiguous()  # [1, 1, D, N] -> [N, D]
    elif "decoder.embeddings.token_projection.weight" in renamed:
        projection = renamed["decoder.embeddings.token_projection.weight"]
        renamed[key] = projection.new_zeros(num_registers, projection.shape[0])
    renamed.update({f"vae.{k}": v for k, v in vae_state.items()})
    return renamed, unmapped


def looks_like(keys: set[str]) -> bool:
    """Whether a checkpoint with these tensor names is an original FlexTok release (key signature)."""
    return any(key.startswith("encoder.module_dict.") for key in keys)


def convert(source, config_file=None, presets_file=None) -> ConversionResult:
    state_dict, original, folder = _read_source(source, config_file)
    presets = load_presets(DEFAULT_PRESETS, presets_file)
    config, rules, vae_state, notes = build(state_dict, original, folder, presets)
    logger.info(
        "building FlexTokModel (encoder %dx%d, decoder %dx%d, %d registers, FSQ %s)",
        config.encoder_num_hidden_layers, config.encoder_hidden_size, config.decoder_num_hidden_layers,
        config.decoder_hidden_size, config.num_latent_tokens, config.fsq_levels,
    )
    try:
        model = FlexTokModel(config).eval()
    except Exception as error:  # e.g. an inferred VAE config that diffusers rejects
        raise ConversionError(f"could not build FlexTokModel from the derived config: {error}") from error
    converted, unmapped = convert_state_dict(state_dict, rules, vae_state, config.num_latent_tokens)
    load_into_model(model, converted, unmapped, source=state_dict)
    for note in notes:
        logger.info("note: %s", note)
    processor = center_crop_image_processor(FlexTokImageProcessor, config.image_size)
    return ConversionResult(model=model, processors=[processor], notes=notes)
