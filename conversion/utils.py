"""The conversion framework: safe checkpoint loading, strict key accounting, presets and writing the result.

An architecture's converter (``convert_<arch>.py``) exposes ``convert(source, config_file, presets) ->
ConversionResult``; ``vistok-convert`` (``__main__.py``) does the rest through ``save_conversion``.
"""

import contextlib
import gc
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..modeling.layers import split_qkv


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
    (``{"state_dict": ...}``, ``{"model_state_dict": ...}`` (openai-whisper), ``{"model": ...}``, ``{"ema": ...}``,
    ``{"module": ...}``) are unwrapped; ``ema`` wins."""
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
    for wrapper_key in ("ema", "state_dict", "model_state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper_key), dict):
            state = state[wrapper_key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} does not contain a flat dict of tensors.")
    return state


def checkpoint_keys(path: str | Path) -> set[str]:
    """Tensor names of a checkpoint file (safetensors headers only; other formats are loaded)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as handle:
                return set(handle.keys())
        except Exception as error:  # corrupt or truncated header
            raise ConversionError(f"could not read safetensors file {path}: {error}") from error
    return set(load_checkpoint(path))


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
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConversionError(f"could not read config file {path}: {error}") from None
    if not text.strip():
        raise ConversionError(f"config file {path} is empty; it should hold the original config.")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as error:  # json.JSONDecodeError, yaml.YAMLError
        kind = "YAML" if path.suffix in (".yaml", ".yml") else "JSON"
        raise ConversionError(f"config file {path} is not valid {kind}: {error}") from None
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


def require_tensor(state_dict: dict[str, torch.Tensor], key: str, what: str, role: str | None = None) -> torch.Tensor:
    """``state_dict[key]``, or a ConversionError saying the source does not look like a ``what`` checkpoint (``role``
    says what the tensor is for)."""
    if key not in state_dict:
        role = f" ({role})" if role else ""
        raise ConversionError(f"the checkpoint has no tensor {key!r}{role}; is it a {what} checkpoint?")
    return state_dict[key]


def count_layers(keys, prefix: str) -> int:
    """Number of numbered blocks ``f"{prefix}.{i}.…"`` among ``keys`` (a state dict or its names; ``prefix`` with or
    without the trailing dot); they must exist and be numbered 0..n-1."""
    prefix = prefix.rstrip(".") + "."
    indices = {int(m.group(1)) for key in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", key))}
    if not indices or sorted(indices) != list(range(len(indices))):
        raise ConversionError(f"the layers under {prefix!r} are missing or not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def split_fused_qkv(state_dict: dict[str, torch.Tensor], fused: str, parts: tuple[str, str, str]) -> dict:
    """Splits every tensor whose key has the component ``fused`` (``.qkv.``) into three tensors whose keys have
    ``parts`` instead (``.q_proj.``, ``.k_proj.``, ``.v_proj.``); other keys are kept."""
    result = {}
    for key, tensor in state_dict.items():
        if f".{fused}." not in key:
            result[key] = tensor
            continue
        try:
            pieces = split_qkv(tensor, key)
        except ValueError as error:
            raise ConversionError(str(error)) from None
        for part, piece in zip(parts, pieces):
            result[key.replace(f".{fused}.", f".{part}.")] = piece
    return result


def config_disagreements(declared: dict, from_weights: dict) -> list[str]:
    """Notes for the conversion summary where the original config declares a value (not None) that the weights
    contradict; the weights win."""
    return [
        f"the original config says {name}={declared[name]!r} but the weights have {value!r}; converted with {value!r}"
        for name, value in from_weights.items()
        if declared.get(name) is not None and declared[name] != value
    ]


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


def raise_if_mismatched(unmapped, unexpected, missing, mismatched) -> None:
    """Raises a ``ConversionError`` naming every problem of a strict load (keys or ``"key: shapes"`` strings)."""
    problems = []
    if unmapped:
        problems.append(f"source tensors with no mapping: {sorted(unmapped)}")
    if unexpected:
        problems.append(f"converted tensors the model does not have: {sorted(unexpected)}")
    if missing:
        problems.append(f"model tensors missing from the checkpoint: {sorted(missing)}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched}")
    if problems:
        raise ConversionError("checkpoint does not match the model:\n  " + "\n  ".join(problems))


def _storage(tensor: torch.Tensor):
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


def load_into_model(
    model: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    unmapped: list[str] = (),
    source: dict[str, torch.Tensor] | None = None,
) -> None:
    """Strictly loads ``state_dict`` into ``model``: every target tensor must be filled with a tensor of the right
    shape and every source key used, otherwise a ``ConversionError`` names the offending keys. With ``source`` (the
    original state dict), a shape mismatch also names the original tensor it came from."""
    target = model.state_dict()
    origin = {}
    for key, tensor in (source or {}).items():
        origin.setdefault(_storage(tensor), key)
    origin.pop(None, None)

    def _from(key: str) -> str:
        name = origin.get(_storage(state_dict[key]))
        return f" (source tensor {name!r})" if name and name != key else ""

    missing = sorted(set(target) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(target))
    mismatched = [
        f"{k}{_from(k)}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(set(target) & set(state_dict))
        if tuple(state_dict[k].shape) != tuple(target[k].shape)
    ]
    raise_if_mismatched(unmapped, unexpected, missing, mismatched)
    for key in tqdm(list(target), desc="copying tensors", disable=len(target) < 200, leave=False):
        target[key].copy_(state_dict[key].to(target[key].dtype))


def check_paths(source: str | Path, dest: str | Path, force: bool) -> Path:
    """Refuses a DEST that would overwrite or nest with SOURCE, a DEST that is a file, and a non-empty DEST without
    ``force``; returns DEST as a Path."""
    dest = Path(dest)
    if source is not None and Path(source).exists():
        source_path, dest_path = Path(source).resolve(), dest.resolve()
        if source_path == dest_path or source_path in dest_path.parents or dest_path in source_path.parents:
            raise ConversionError(
                f"destination {dest} and source {source} overlap (the same folder, or one inside the other); "
                "writing there could destroy the original checkpoint. Choose a separate destination folder."
            )
    if dest.exists() and not dest.is_dir():
        raise ConversionError(f"destination {dest} exists and is not a directory.")
    if dest.exists() and any(dest.iterdir()) and not force:
        raise ConversionError(f"destination {dest} is not empty; pass --force to overwrite it.")
    return dest


def cast_model(model: torch.nn.Module, dtype: str) -> None:
    """Casts floating parameters to ``dtype`` ("float32", "bfloat16", "float16") in place, except the modules the
    model keeps in float32 (``_keep_in_fp32_modules_strict``: codebooks, VAEs)."""
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


def _usage_card(model: torch.nn.Module, arch: str | None, source) -> str:
    name = type(model).__name__
    header = (f"# {name} converted with vistok\n\nConverted from the original release `{source}` with "
              f"`vistok-convert {arch or ''}`. ")
    if type(model).__module__.startswith("transformers."):  # InternVL, VideoLLaMA3, ...: transformers' own classes
        return header + (
            f"It uses transformers' own `{model.config.model_type}` classes; load it with transformers alone:\n\n"
            "```python\nfrom transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
            'model = AutoModelForImageTextToText.from_pretrained("path/to/this/folder")\n'
            'processor = AutoProcessor.from_pretrained("path/to/this/folder")\n```\n'
        )
    return header + (
        "Load it with vistok imported (vistok registers the architecture with transformers; without it transformers "
        f"does not recognize the model type `{model.config.model_type}`):\n\n"
        "```python\nimport vistok  # registers the vistok architectures\n"
        "from transformers import AutoModel\n\n"
        f'model = AutoModel.from_pretrained("path/to/this/folder")\n```\n'
    )


def _make_readable(folder: Path) -> None:
    """Gives the written files the permissions of a normal file (some writers create them 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def save_conversion(
    result: ConversionResult,
    dest: str | Path,
    dtype: str | None = None,
    force: bool = False,
    push_to_hub: str | None = None,
    verify: bool = True,
    source: str | Path | None = None,
    arch: str | None = None,
) -> Path:
    """Writes the converted model (safetensors), its processors and a usage card to ``dest``; optionally pushes them
    to the Hub.

    Everything is written to a temporary folder next to ``dest`` and moved into place only when complete (and, with
    ``verify``, reloaded through the Auto classes without missing or unused weights), so a failed or interrupted
    conversion leaves ``dest`` as it was. ``result.model`` is released before that reload, so an LLM-sized model is
    never held twice. ``dest`` must not overlap ``source``; a non-empty ``dest`` is replaced only
    with ``force``."""
    dest = check_paths(source, dest, force)
    model = result.model
    if dtype is not None:
        cast_model(model, dtype)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        logger.info("writing %s to %s", type(model).__name__, dest)
        model.save_pretrained(staging, safe_serialization=True)
        for processor in result.processors:
            processor.save_pretrained(staging)
        if not (staging / "README.md").exists():
            (staging / "README.md").write_text(_usage_card(model, arch, source), encoding="utf-8")
        model_class = type(model)
        # release the converted weights first, so the reload below never holds a second copy of an LLM-sized model
        result.model = model = None
        gc.collect()
        if verify:
            verify_saved_model(staging, model_class)
        _make_readable(staging)
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if push_to_hub:
        from huggingface_hub import HfApi

        logger.info("pushing %s to the Hub repo %s", dest, push_to_hub)
        api = HfApi()
        api.create_repo(push_to_hub, exist_ok=True)
        # exactly the verified files, usage card included, in one commit
        api.upload_folder(repo_id=push_to_hub, folder_path=dest, commit_message="Upload model converted by vistok")
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


# -- large (sharded) checkpoints -------------------------------------------------------------------------------------
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def checkpoint_files(source: str | Path) -> list[Path]:
    """The weight files of a release: the shards listed by ``model.safetensors.index.json`` (or the ``.bin`` index),
    else the single checkpoint file of the folder (see ``find_checkpoint_file``)."""
    source = Path(source)
    for name in INDEX_FILES if source.is_dir() else ():
        if (source / name).is_file():
            weight_map = json.loads((source / name).read_text(encoding="utf-8")).get("weight_map", {})
            files = sorted({source / shard for shard in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if not files or missing:
                raise ConversionError(f"{source / name} lists shards that are absent: {missing or 'none listed'}.")
            return files
    return [find_checkpoint_file(source, preferred=("model.safetensors", "pytorch_model.bin"))]


SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "I64": "int64",
                      "I32": "int32", "BOOL": "bool"}


def read_checkpoint_shapes(files: list[Path]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{key: (shape, dtype)}`` of every tensor in ``files`` without reading the data (safetensors headers; ``.bin``
    files are memory-mapped)."""
    from safetensors import safe_open

    shapes = {}
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    tensor_slice = handle.get_slice(key)
                    dtype = getattr(torch, SAFETENSORS_DTYPES.get(tensor_slice.get_dtype(), "float32"))
                    shapes[key] = (tuple(tensor_slice.get_shape()), dtype)
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            shapes.update({key: (tuple(t.shape), t.dtype) for key, t in state.items()})
    return shapes


def build_empty_model(model_class: type, config) -> torch.nn.Module:
    """``model_class(config)`` without initialising the weights: parameters are allocated but not written (so not
    resident in memory) until ``load_shards_into_model`` replaces them; buffers computed in ``__init__`` are real."""
    from transformers.initialization import no_init_weights, no_tie_weights

    with no_init_weights(), no_tie_weights():
        return model_class(config)


def load_shards_into_model(model: torch.nn.Module, files: list[Path], convert_shard) -> None:
    """Fills ``model`` one checkpoint file at a time, so a sharded release never has two full copies in memory.

    ``convert_shard(state_dict) -> (converted, unmapped, dropped)`` maps one shard's tensors to ``model``'s names (see
    ``rename_state_dict``). Converted tensors are assigned as the model's parameters (no copy; their dtype is kept).
    At the end the accounting is strict like ``load_into_model``: every source tensor mapped or dropped on purpose,
    every model tensor filled once with the right shape; tied weights (``all_tied_weights_keys``) are then tied."""
    target = model.state_dict()
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    filled, unmapped, unexpected, mismatched = set(), [], [], []
    for path in tqdm(files, desc="converting shards", disable=len(files) < 2):
        converted, shard_unmapped, _ = convert_shard(load_checkpoint(path))
        unmapped.extend(shard_unmapped)
        for key, tensor in converted.items():
            if key not in target or key in tied:
                unexpected.append(key)
            elif tuple(tensor.shape) != tuple(target[key].shape):
                mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(target[key].shape)}")
            elif key in filled:
                raise ConversionError(f"two source tensors map to {key!r}.")
        usable = {k: v for k, v in converted.items()
                  if k in target and k not in tied and tuple(v.shape) == tuple(target[k].shape)}
        model.load_state_dict(usable, strict=False, assign=True)
        filled.update(converted)
        del converted
    missing = sorted(set(target) - tied - filled)
    raise_if_mismatched(unmapped, unexpected, missing, mismatched)
    model.tie_weights()


# fields of an original (v4) LLM config that carry over unchanged into a transformers 5 text config
LLM_CONFIG_FIELDS = ("hidden_act", "max_position_embeddings", "rms_norm_eps", "bos_token_id", "eos_token_id",
                     "pad_token_id", "use_sliding_window", "sliding_window", "max_window_layers", "attention_dropout")


def llm_config_fields(llm: dict) -> dict:
    """The ``LLM_CONFIG_FIELDS`` present in ``llm`` plus ``rope_parameters`` built from the v4 ``rope_theta`` /
    ``rope_scaling`` keys (``{"type": "dynamic", "factor": 2.0}`` -> ``rope_type: dynamic``). Sizes are not copied:
    converters read them from the weights."""
    rope = {"rope_type": "default", "rope_theta": float(llm.get("rope_theta", 10000.0))}
    scaling = llm.get("rope_scaling")
    if scaling:
        rope_type = scaling.get("rope_type", scaling.get("type"))
        rope |= {k: v for k, v in scaling.items() if k != "type"} | {"rope_type": rope_type}
    return {k: llm[k] for k in LLM_CONFIG_FIELDS if k in llm} | {"rope_parameters": rope}


def require_shape(shapes: dict, key: str, release: str) -> tuple[int, ...]:
    """Shape of ``key`` from ``read_checkpoint_shapes`` output (the ``require_tensor`` error if absent)."""
    return require_tensor(shapes, key, release)[0]


def load_release_tokenizer(folder: Path, named_tokens: dict[str, str], loaders: dict | None = None):
    """The tokenizer of an original release, loaded without its remote code, with ``named_tokens``
    (``{"image_token": "<image>", ...}``) as named special tokens (``tokenizer.image_token`` / ``image_token_id``, kept
    by ``save_pretrained``) as transformers' multimodal processors expect. Returns None without tokenizer files.

    ``tokenizer_config.json``'s ``tokenizer_class`` picks the loader: ``loaders[name](folder, **kwargs)`` (for
    remote-code tokenizers), else the transformers class of that name, else the ``tokenizer.json`` backend."""
    from transformers import TokenizersBackend
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    folder = Path(folder)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        return None
    config_file = folder / "tokenizer_config.json"
    name = load_config_file(config_file).get("tokenizer_class") if config_file.is_file() else None
    kwargs = {"extra_special_tokens": dict(named_tokens)}
    if name in (loaders or {}):
        return loaders[name](folder, **kwargs)
    tokenizer_class = tokenizer_class_from_name(name) if name else None
    if tokenizer_class is None:
        if not (folder / "tokenizer.json").is_file():
            raise ConversionError(f"cannot load tokenizer class {name!r} from {folder} without its remote code.")
        tokenizer_class = TokenizersBackend
    return tokenizer_class.from_pretrained(folder, **kwargs)


def read_checkpoint_and_config(source: str | Path, config_file: str | Path | None = None) -> tuple[dict, dict]:
    """(state dict, original config) of a Hub-mixin style SOURCE: a folder with ``config.json`` next to its
    checkpoint, or a checkpoint file with ``config_file`` (default: the ``config.json`` beside it)."""
    source = Path(source)
    checkpoint = find_checkpoint_file(source, preferred=("model.safetensors", "pytorch_model.bin"))
    if config_file is None:
        config_file = (source if source.is_dir() else source.parent) / "config.json"
        if not Path(config_file).is_file():
            raise ConversionError(f"no config.json next to {checkpoint}; pass the original config with --config.")
    logger.info("reading %s and %s", checkpoint, config_file)
    return load_checkpoint(checkpoint), load_config_file(config_file)


# --------------------------------------------------------------------------------------------- sources on the Hub


@dataclass(frozen=True)
class HubFiles:
    """The files of an original Hub release that a converter reads (each converter declares one as ``HUB_FILES``).

    ``required``: groups of alternatives (``fnmatch`` patterns, preferred first); for each group the first pattern
    that matches a file of the repo is downloaded (every file it matches), and a group that matches nothing fails
    before anything is downloaded. ``optional``: patterns downloaded when the repo has them."""

    required: tuple[tuple[str, ...], ...]
    optional: tuple[str, ...] = ()

    def select(self, repo_files: list[str], repo_id: str) -> list[str]:
        from fnmatch import fnmatchcase

        def matching(pattern):
            return [name for name in repo_files if fnmatchcase(name, pattern)]

        selected = []
        for alternatives in self.required:
            found = next((files for files in map(matching, alternatives) if files), None)
            if found is None:
                raise ConversionError(
                    f"Hub repo {repo_id} has none of {list(alternatives)} (its files: {sorted(repo_files)}); is it "
                    "an original release of this architecture?"
                )
            selected += found
        for pattern in self.optional:
            selected += matching(pattern)
        return sorted(set(selected))


#: what a converter without its own ``HUB_FILES`` reads of a release: weights, configs and tokenizer files; code files
#: are never downloaded (nothing in a source is executed)
DEFAULT_HUB_FILES = HubFiles(
    required=(), optional=("*.json", "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.yaml", "*.yml", "*.model",
                           "*.txt", "*.tiktoken", "*.jinja"),
)


def variant_hub_ids(arch: str) -> dict[str, str]:
    """Released variant name -> Hub repo id of the original release, from the config class of ``arch``'s system
    (``TiTokConfig.variants``, ...). Empty for architectures without a variant table."""
    from ..registry import SYSTEMS, resolve

    for system in SYSTEMS:
        if arch in system.converters:
            variants = getattr(resolve(system.config), "variants", {})
            return {name: entry["hub_id"] for name, entry in variants.items() if "hub_id" in entry}
    return {}


def _normalize_variant(name: str) -> str:
    return name.lower().replace("-", "_")


def hub_repo_id(arch: str, source: str) -> str | None:
    """The Hub repo id that SOURCE names: a released variant of ``arch`` (``titok-l32`` or ``titok_l32``; a bare
    ``l32`` after the architecture name works too) or ``namespace/name``; None for a local path."""
    if Path(source).exists():
        return None
    table = {_normalize_variant(name): hub_id for name, hub_id in variant_hub_ids(arch).items()}
    for candidate in (_normalize_variant(source), _normalize_variant(f"{arch}_{source}")):
        if candidate in table:
            return table[candidate]
    parts = source.split("/")
    if len(parts) == 2 and all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", part) for part in parts):
        return source
    known = ", ".join(sorted(variant_hub_ids(arch))) or "none"
    raise ConversionError(
        f"source {source!r} is not a local file or folder, a Hub repo id (namespace/name) or a released {arch} "
        f"variant (known: {known})."
    )


def download_release(repo_id: str, hub_files: HubFiles, revision: str | None = None) -> Path:
    """Downloads only the files ``hub_files`` selects from the Hub repo (with huggingface_hub's progress bars, into
    its cache); returns the snapshot folder."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        repo_files = HfApi().list_repo_files(repo_id, revision=revision)
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise ConversionError(f"Hub repo {repo_id} (revision {revision or 'main'}) was not found: {error}") from None
    except HfHubHTTPError as error:
        raise ConversionError(f"could not list the files of Hub repo {repo_id}: {error}") from None
    allow_patterns = hub_files.select(repo_files, repo_id)
    logger.info("downloading %s from %s", ", ".join(allow_patterns), repo_id)
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns))


@contextlib.contextmanager
def resolve_source(arch: str, source: str | Path, converter=None):
    """Context manager giving the local path to convert for SOURCE: SOURCE itself when it exists locally, else the
    Hub release it names (a repo id or a released variant name, see ``hub_repo_id``) downloaded with only the files
    the converter declares in ``HUB_FILES``. A converter whose release points to other repos (FlexTok's VAE) declares
    ``hub_linked_repos(folder) -> {relative path: repo id}`` and ``HUB_LINKED_FILES``; those are downloaded too and
    the result is a temporary folder that lays the snapshots out as a local copy of the release would be."""
    repo_id = hub_repo_id(arch, str(source))
    if repo_id is None:
        yield Path(source)
        return
    folder = download_release(repo_id, getattr(converter, "HUB_FILES", DEFAULT_HUB_FILES))
    linked_repos = getattr(converter, "hub_linked_repos", lambda _: {})(folder)
    if not linked_repos:
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="vistok-convert-") as staging:
        staging = Path(staging)
        for entry in folder.iterdir():
            (staging / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
        for relative, linked_id in linked_repos.items():
            link = staging / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(download_release(linked_id, converter.HUB_LINKED_FILES), target_is_directory=True)
        yield staging
