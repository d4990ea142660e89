"""The conversion framework: safe checkpoint loading, strict key accounting, presets and writing the result.

An architecture's converter (``convert_<arch>.py``) exposes ``convert(source, config_file, presets) ->
ConversionResult``; ``vistok-convert`` (``__main__.py``) does the rest through ``save_conversion``.
"""

import gc
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


def split_fused_qkv(state_dict: dict[str, torch.Tensor], pattern: str, template: str) -> dict[str, torch.Tensor]:
    """Splits fused q/k/v projections along their first dimension.

    ``pattern`` fully matches a fused key with two groups (module prefix, ``weight``/``bias``); ``template`` formats
    the new key from ``prefix``, ``name`` (q, k or v) and ``kind``. Example (timm): ``r"(.*\\.attn)\\.qkv\\.(weight|bias)"``
    with ``"{prefix}.{name}.{kind}"``; nn.MultiheadAttention: ``r"(.*)\\.in_proj_(weight|bias)"``,
    ``"{prefix}.{name}_proj.{kind}"``. Other keys pass through unchanged."""
    result = {}
    for key, tensor in state_dict.items():
        match = re.fullmatch(pattern, key)
        if match is None:
            result[key] = tensor
            continue
        if tensor.shape[0] % 3:
            raise ConversionError(f"{key} has shape {tuple(tensor.shape)}; its first dimension must split in 3.")
        for name, part in zip("qkv", tensor.chunk(3, dim=0)):
            result[template.format(prefix=match.group(1), name=name, kind=match.group(2))] = part.contiguous()
    return result


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
    raise_if_mismatched(unmapped, unexpected, missing, mismatched)
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

    Refuses a non-empty ``dest`` unless ``force``. ``result.model`` is released once written. With ``verify``,
    reloads ``dest`` through the Auto classes and fails if any weight is missing or unused; only then is the folder
    uploaded (one commit with exactly the files written)."""
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
    model_class = type(model)
    # release the converted weights first, so the reload below never holds a second copy of an LLM-sized model
    result.model = model = None
    gc.collect()
    if verify:
        verify_saved_model(dest, model_class)
    if push_to_hub:
        from huggingface_hub import HfApi

        logger.info("pushing %s to the Hub repo %s", dest, push_to_hub)
        api = HfApi()
        api.create_repo(push_to_hub, exist_ok=True)
        api.upload_folder(repo_id=push_to_hub, folder_path=dest, commit_message="Upload model converted by vistok")
    return dest


def verify_saved_model(dest: Path, model_class: type) -> None:
    """Reloads ``dest`` with ``AutoConfig`` + the model class and checks that no weight was missing or unused."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(dest)
    if not isinstance(config, model_class.config_class):
        raise ConversionError(
            f"{dest} reloads as {type(config).__name__}, expected {model_class.config_class.__name__}.")
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


def count_layers(keys, prefix: str) -> int:
    """Number of ``<prefix>.<i>.`` blocks among ``keys`` (``prefix`` without the trailing dot); checks they are
    numbered 0..n-1."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    indices = {int(m.group(1)) for key in keys if (m := pattern.match(key))}
    if indices and indices != set(range(len(indices))):
        raise ConversionError(f"layers under {prefix} are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


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
    """Shape of ``key`` from ``read_checkpoint_shapes`` output; a ``ConversionError`` naming ``release`` if absent."""
    if key not in shapes:
        raise ConversionError(f"the checkpoint has no {key!r}; is this a {release} release?")
    return shapes[key][0]


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


# files a converter may read from a Hub release; code files are never downloaded (nothing in a source is executed)
SOURCE_FILE_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.yaml", "*.yml",
                        "*.model", "*.txt", "*.tiktoken", "*.jinja"]


def resolve_source(source: str | Path) -> Path:
    """``source`` as a local path; a Hub repo id (``org/name``, optionally ``org/name@revision``) that is not a local
    path is downloaded with ``huggingface_hub.snapshot_download`` (weights, configs and tokenizer files only)."""
    path = Path(source)
    if path.exists():
        return path
    repo_id, _, revision = str(source).partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise ConversionError(f"source {source} is neither a local file or folder nor a Hub repo id (org/name).")
    from huggingface_hub import snapshot_download

    logger.info("downloading %s from the Hub", source)
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=SOURCE_FILE_PATTERNS))
    except Exception as error:  # offline, missing repo, no access
        raise ConversionError(f"could not download {source} from the Hub: {error}") from error
