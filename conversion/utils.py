"""The conversion framework: safe checkpoint loading, strict key accounting, presets and writing the result.

An architecture's converter (``convert_<arch>.py``) exposes ``convert(source, config_file, presets) ->
ConversionResult``; ``vistok-convert`` (``__main__.py``) does the rest through ``save_conversion``.
"""

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm


logger = logging.getLogger("vistok.conversion")

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


class ConversionError(ValueError):
    """Raised when a source checkpoint cannot be converted faithfully (missing/unmapped keys, bad shapes...)."""


@dataclass
class ConversionResult:
    """What a converter returns: the model with converted weights and the processors to save next to it."""

    model: torch.nn.Module
    processors: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Loads a state dict from a safetensors file, or a ``.bin/.pt/.pth/.ckpt`` file with
    ``torch.load(weights_only=True)`` (nothing in it is executed). Training checkpoints that wrap the weights
    (``{"state_dict": ...}``, ``{"model": ...}``, ``{"ema": ...}``, ``{"module": ...}``) are unwrapped; ``ema`` wins."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint file {path} does not exist.")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as error:  # corrupt or truncated file
            raise ConversionError(f"could not read safetensors file {path}: {error}") from error
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConversionError(
            f"could not read {path} with torch.load(weights_only=True): {error}. Only plain tensor checkpoints are "
            "accepted; nothing in a checkpoint is executed."
        ) from error
    for wrapper_key in ("ema", "state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper_key), dict):
            state = state[wrapper_key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} does not contain a flat dict of tensors.")
    return state


def find_checkpoint_file(source: Path, preferred: tuple[str, ...] = ()) -> Path:
    """Returns ``source`` if it is a file, else the single checkpoint file of the directory (``preferred`` names
    first, e.g. ``model.safetensors``)."""
    source = Path(source)
    if source.is_file():
        return source
    if not source.is_dir():
        raise ConversionError(f"source {source} is neither a checkpoint file nor a directory.")
    for name in preferred:
        if (source / name).is_file():
            return source / name
    candidates = sorted(p for p in source.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
    if len(candidates) != 1:
        raise ConversionError(
            f"expected exactly one checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)}) in {source}, found "
            f"{[p.name for p in candidates]}; pass the file itself as SOURCE."
        )
    return candidates[0]


def load_config_file(path: str | Path) -> dict:
    """Reads a JSON or YAML config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"config file {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConversionError(f"config file {path} does not hold a mapping.")
    return data


def load_presets(defaults: dict[str, dict], overrides_file: str | Path | None) -> dict[str, dict]:
    """Released presets of an architecture, updated with ``--preset-overrides FILE`` (``{"name": {...}}``)."""
    presets = {name: dict(values) for name, values in defaults.items()}
    if overrides_file is not None:
        overrides = load_config_file(overrides_file)
        for name, values in overrides.items():
            if not isinstance(values, dict):
                raise ConversionError(f"preset {name!r} in {overrides_file} must map to a dict, got {values!r}.")
            presets.setdefault(name, {}).update(values)
    return presets


def get_preset(presets: dict[str, dict], name: str, required: tuple[str, ...] = ()) -> dict:
    if name not in presets:
        raise ConversionError(
            f"unknown preset {name!r}; known presets: {sorted(presets)}. Pass its sizes with --preset-overrides FILE "
            f'containing {{"{name}": {{"hidden_size": ..., "num_hidden_layers": ..., "num_attention_heads": ...}}}}.'
        )
    preset = presets[name]
    missing = [k for k in required if k not in preset]
    if missing:
        raise ConversionError(f"preset {name!r} lacks {missing}; add them with --preset-overrides.")
    return preset


def rename_state_dict(
    state_dict: dict[str, torch.Tensor],
    rules: list[tuple[str, str]],
    dropped: list[str] = (),
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Applies regex ``rules`` (first full match wins, ``re.fullmatch`` + ``expand``) to every key.

    Returns ``(renamed, unmapped, dropped_keys)``: keys that matched a ``dropped`` pattern are left out on purpose,
    keys that matched nothing are reported as unmapped."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    dropped_compiled = [re.compile(pattern) for pattern in dropped]
    renamed, unmapped, dropped_keys = {}, [], []
    for key, tensor in state_dict.items():
        if any(p.fullmatch(key) for p in dropped_compiled):
            dropped_keys.append(key)
            continue
        for pattern, replacement in compiled:
            match = pattern.fullmatch(key)
            if match:
                new_key = match.expand(replacement)
                if new_key in renamed:
                    raise ConversionError(f"two source keys map to {new_key!r} (second: {key!r}).")
                renamed[new_key] = tensor
                break
        else:
            unmapped.append(key)
    return renamed, unmapped, dropped_keys


def load_into_model(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], unmapped: list[str] = ()) -> None:
    """Strictly loads ``state_dict`` into ``model``: every target tensor must be filled with a tensor of the right
    shape and every source key used, otherwise a ``ConversionError`` names the offending keys."""
    target = model.state_dict()
    missing = sorted(set(target) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(target))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(set(target) & set(state_dict))
        if tuple(state_dict[k].shape) != tuple(target[k].shape)
    ]
    problems = []
    if unmapped:
        problems.append(f"source tensors with no mapping: {sorted(unmapped)}")
    if unexpected:
        problems.append(f"converted tensors the model does not have: {unexpected}")
    if missing:
        problems.append(f"model tensors missing from the checkpoint: {missing}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched}")
    if problems:
        raise ConversionError("checkpoint does not match the model:\n  " + "\n  ".join(problems))
    for key in tqdm(list(target), desc="copying tensors", disable=len(target) < 200, leave=False):
        target[key].copy_(state_dict[key].to(target[key].dtype))


def save_conversion(
    result: ConversionResult,
    dest: str | Path,
    dtype: str | None = None,
    force: bool = False,
    push_to_hub: str | None = None,
    verify: bool = True,
) -> Path:
    """Writes the converted model (safetensors) and its processors to ``dest``; optionally pushes them to the Hub.

    Refuses a non-empty ``dest`` unless ``force``. With ``verify``, reloads ``dest`` through the Auto classes and
    fails if any weight is missing or unused."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ConversionError(f"destination {dest} exists and is not a directory.")
    if dest.exists() and any(dest.iterdir()) and not force:
        raise ConversionError(f"destination {dest} is not empty; pass --force to overwrite it.")
    dest.mkdir(parents=True, exist_ok=True)
    model = result.model
    if dtype is not None:
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
        if torch_dtype is None:
            raise ConversionError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}.")
        keep = set(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
        for name, module in model.named_modules():
            if any(name == k or name.startswith(k + ".") or name.endswith("." + k) for k in keep):
                continue
            for param in module.parameters(recurse=False):
                if param.is_floating_point():
                    param.data = param.data.to(torch_dtype)
        model.config.dtype = dtype
    logger.info("writing %s to %s", type(model).__name__, dest)
    model.save_pretrained(dest, safe_serialization=True)
    for processor in result.processors:
        processor.save_pretrained(dest)
    if verify:
        verify_saved_model(dest, type(model))
    if push_to_hub:
        logger.info("pushing %s to the Hub repo %s", dest, push_to_hub)
        model.push_to_hub(push_to_hub)
        for processor in result.processors:
            processor.push_to_hub(push_to_hub)
    return dest


def verify_saved_model(dest: Path, model_class: type) -> None:
    """Reloads ``dest`` with ``AutoConfig`` + the model class and checks that no weight was missing or unused."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(dest)
    if not isinstance(config, model_class.config_class):
        raise ConversionError(f"{dest} reloads as {type(config).__name__}, expected {model_class.config_class.__name__}.")
    _, info = model_class.from_pretrained(dest, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise ConversionError(f"the written model does not reload cleanly: {problems}")


def count_layers(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of numbered blocks ``<prefix><i>.*`` in ``state_dict``; they must be numbered 0..n-1."""
    indices = {int(key[len(prefix):].split(".")[0]) for key in state_dict if key.startswith(prefix)}
    if not indices or sorted(indices) != list(range(len(indices))):
        raise ConversionError(f"layers under {prefix!r} are missing or not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def require_tensor(state_dict: dict[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    """``state_dict[key]``, or a ``ConversionError`` saying the checkpoint is not a ``what`` checkpoint."""
    if key not in state_dict:
        raise ConversionError(f"the checkpoint has no tensor {key!r}; is it a {what} checkpoint?")
    return state_dict[key]


def split_fused_qkv(renamed: dict[str, torch.Tensor], fused: str = ".qkv.") -> dict[str, torch.Tensor]:
    """Splits every fused ``...<fused>weight|bias`` tensor (rows q, k, v) into ``q_proj``/``k_proj``/``v_proj``."""
    converted = {}
    for key, tensor in renamed.items():
        if fused in key:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                converted[key.replace(fused, f".{name}.")] = part
        else:
            converted[key] = tensor
    return converted
