"""peft target modules per part of a multimodal LLM, so LoRA users need not read module names.

>>> from peft import LoraConfig, get_peft_model
>>> targets = get_lora_target_modules(model, parts=("llm", "vision"))
>>> model = get_peft_model(model, LoraConfig(r=8, target_modules=targets))

A model declares where its parts live with a class attribute ``_lora_parts = {"llm": "model.language_model",
"vision": "model.vision_tower", "projector": "model.multi_modal_projector"}`` (module-name prefixes; a part may list
several prefixes). transformers' own multimodal classes that vistok uses are declared in ``LORA_PARTS_BY_MODEL_TYPE``
below, keyed by ``config.model_type``.
"""

from torch import nn


PARTS = ("llm", "vision", "projector")

# transformers' classes (vistok never subclasses them), keyed by config.model_type
LORA_PARTS_BY_MODEL_TYPE = {
    "internvl": {"llm": "model.language_model", "vision": "model.vision_tower",
                 "projector": "model.multi_modal_projector"},
    "video_llama_3": {"llm": "model.language_model", "vision": "model.vision_model", "projector": "model.projector"},
    # Emu3's vision tokenizer (model.vqmodel) turns images into codes by an argmin: no gradient reaches it, so it has
    # no LoRA part; images enter through the LLM's own token embeddings
    "emu3": {"llm": "model.text_model"},
}

# layer types peft's LoRA can wrap
LORA_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def get_lora_parts(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """``{part: (module prefix, ...)}`` declared for ``model`` (its ``_lora_parts`` or the model-type table)."""
    declared = getattr(model, "_lora_parts", None)
    if declared is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        declared = LORA_PARTS_BY_MODEL_TYPE.get(model_type)
    if declared is None:
        raise ValueError(
            f"{type(model).__name__} declares no LoRA parts: set a class attribute `_lora_parts = {{'llm': ..., "
            f"'vision': ..., 'projector': ...}}` (module-name prefixes) or add its model_type to "
            "LORA_PARTS_BY_MODEL_TYPE."
        )
    return {part: (prefixes,) if isinstance(prefixes, str) else tuple(prefixes) for part, prefixes in declared.items()}


def get_lora_target_modules(
    model: nn.Module, parts: str | tuple[str, ...] = ("llm", "vision", "projector"), include_conv: bool = False
) -> list[str]:
    """Full names of the layers LoRA should wrap in ``parts`` of ``model``, for ``LoraConfig(target_modules=...)``.

    Args:
        model: a multimodal model (also accepts a ``PeftModel`` wrapper's base model).
        parts: any of ``"llm"``, ``"vision"``, ``"projector"`` (one string or a tuple).
        include_conv: also return convolutions (patch embeddings); by default only ``nn.Linear`` layers.

    Returns:
        Sorted module names (each is an exact match for peft). The output head (``lm_head``) is never included: it is
        outside every part, and tied heads must not get an adapter of their own.
    """
    parts = (parts,) if isinstance(parts, str) else tuple(parts)
    unknown = [part for part in parts if part not in PARTS]
    if unknown or not parts:
        raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {parts}")
    declared = get_lora_parts(model)
    missing = [part for part in parts if part not in declared]
    if missing:
        raise ValueError(f"{type(model).__name__} has no {missing} part; it declares {sorted(declared)}")
    prefixes = [prefix for part in parts for prefix in declared[part]]
    layer_types = LORA_LAYER_TYPES if include_conv else (nn.Linear,)
    names = sorted(
        name for name, module in model.named_modules()
        if isinstance(module, layer_types) and any(name.startswith(prefix + ".") for prefix in prefixes)
    )
    if not names:
        raise ValueError(f"no LoRA-compatible layers found under {prefixes} in {type(model).__name__}")
    return names
