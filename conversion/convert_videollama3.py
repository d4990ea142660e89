"""Convert released VideoLLaMA3 checkpoints (DAMO-NLP-SG/VideoLLaMA3-*, hub format, ``model_type: videollama3_qwen2``)
into transformers' own ``VideoLlama3ForConditionalGeneration`` (``model_type: video_llama_3``): the written folder
needs no vistok (vistok's same-name subclass only adds input checks).

Accepted SOURCE: a folder laid out like the hub repos: ``config.json``, ``model.safetensors`` or sharded
``model-0000x-of-0000y.safetensors`` + index (converted shard by shard), optional ``preprocessor_config.json`` /
``processor_config.json`` / ``generation_config.json`` and tokenizer files. Tied (2B) and untied (7B) heads.

The original marks images and video frames with one ``<image>`` token; transformers' model needs two ids. Images keep
``<image>``; videos get Qwen2.5's ``<|video_pad|>`` (in every Qwen2.5 vocabulary, unused by VideoLLaMA3's prompts).
Without tokenizer files and with a vocabulary too small to hold ``<|video_pad|>``, both ids stay ``<image>``'s: that
reproduces the original (which tells images and videos apart by call, not by token) but a prompt cannot then mix
images and videos; ``--preset-overrides '{"videollama3": {"video_token_id": N}}'`` picks another id.
"""

from pathlib import Path

from transformers import GenerationConfig, VideoLlama3Config, VideoLlama3ForConditionalGeneration
from transformers.utils import is_torchvision_available

from .utils import (
    ConversionError,
    ConversionResult,
    build_empty_model,
    checkpoint_files,
    count_layers,
    llm_config_fields,
    load_config_file,
    load_presets,
    load_release_tokenizer,
    load_shards_into_model,
    logger,
    read_checkpoint_shapes,
    rename_state_dict,
    require_shape,
)


QWEN2_VIDEO_PAD_ID = 151656  # `<|video_pad|>` in every Qwen2.5 tokenizer
# fmt: off
ORIGINAL_TO_CONVERTED_KEY_MAPPING = [
    (r"model\.vision_encoder\.(.+)",                           r"model.vision_model.\1"),
    (r"model\.mm_projector\.readout\.(\d+)\.(weight|bias)",    r"model.projector.readout.\1.\2"),
    (r"model\.((?:embed_tokens|layers|norm)\..+)",              r"model.language_model.\1"),
    (r"lm_head\.weight",                                       r"lm_head.weight"),
]
# fmt: on
# defaults of the original Videollama3VisionEncoderConfig for keys its diff-only dict leaves out
VISION_DEFAULTS = {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "attention_dropout": 0.0}


def _shape(shapes: dict, key: str) -> tuple[int, ...]:
    return require_shape(shapes, key, "VideoLLaMA3 (hub format)")


def vision_config(original: dict, shapes: dict) -> dict:
    vision = VISION_DEFAULTS | (original.get("vision_encoder_config") or {})
    if "num_attention_heads" not in vision:
        raise ConversionError("vision_encoder_config lacks num_attention_heads (not recoverable from the weights).")
    hidden, channels, patch, _ = _shape(shapes, "model.vision_encoder.embeddings.patch_embedding.weight")
    prefix = "model.vision_encoder.encoder.layers"
    return {
        "hidden_size": hidden, "num_channels": channels, "patch_size": patch,
        "num_hidden_layers": count_layers(shapes, prefix + "."), "num_attention_heads": vision["num_attention_heads"],
        "intermediate_size": _shape(shapes, prefix + ".0.mlp.fc1.weight")[0],
        "hidden_act": vision["hidden_act"], "layer_norm_eps": vision["layer_norm_eps"],
        "attention_dropout": vision["attention_dropout"],
    }


def text_config(original: dict, shapes: dict) -> dict:
    if original.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise ConversionError(f"mm_projector_type={original['mm_projector_type']!r}: transformers' VideoLLaMA3 "
                              "implements the 2-layer GELU projector only.")
    if "num_attention_heads" not in original:
        raise ConversionError("config.json lacks num_attention_heads (not recoverable from the weights).")
    vocab, hidden = _shape(shapes, "model.embed_tokens.weight")
    heads = original["num_attention_heads"]
    head_dim = original.get("head_dim") or hidden // heads
    kv_heads = _shape(shapes, "model.layers.0.self_attn.k_proj.weight")[0] // head_dim
    if original.get("num_key_value_heads", kv_heads) != kv_heads:
        raise ConversionError(f"config.json says {original['num_key_value_heads']} KV heads, weights have {kv_heads}.")
    tied = "lm_head.weight" not in shapes
    if not tied and original.get("tie_word_embeddings"):
        raise ConversionError("config.json ties the head to the embeddings but the checkpoint stores lm_head.weight.")
    return llm_config_fields(original) | {
        "model_type": "qwen2", "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": _shape(shapes, "model.layers.0.mlp.gate_proj.weight")[0],
        "num_hidden_layers": count_layers(shapes, "model.layers."), "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "tie_word_embeddings": tied,
    }


def find_tokenizer(folder: Path):
    """The release's tokenizer (None without tokenizer files), with ``<image>`` as image token and ``<|video_pad|>``
    as video token."""
    tokenizer = load_release_tokenizer(folder, {"image_token": "<image>", "video_token": "<|video_pad|>"})
    if tokenizer is not None and "<image>" not in tokenizer.get_vocab():
        raise ConversionError(f"the tokenizer in {folder} has no <image> token.")
    return tokenizer


def token_ids(original: dict, tokenizer, vocab_size: int, overrides: dict, notes: list) -> tuple[int, int]:
    image_id = tokenizer.image_token_id if tokenizer is not None else original.get("image_token_index", 151665)
    if image_id != original.get("image_token_index", image_id):
        raise ConversionError(f"tokenizer <image> id {image_id} != config image_token_index "
                              f"{original['image_token_index']}.")
    if "video_token_id" in overrides:
        video_id = int(overrides["video_token_id"])
    elif tokenizer is not None:
        video_id = tokenizer.video_token_id
    elif QWEN2_VIDEO_PAD_ID < vocab_size and QWEN2_VIDEO_PAD_ID != image_id:
        video_id = QWEN2_VIDEO_PAD_ID
    else:
        video_id = image_id
        notes.append(f"no tokenizer and no <|video_pad|> in a vocab of {vocab_size}: videos use the image token id "
                     f"{image_id} too, so one prompt cannot mix images and videos")
    if video_id >= vocab_size:
        raise ConversionError(f"video token id {video_id} is outside the vocabulary ({vocab_size}).")
    return image_id, video_id


def build_processors(folder: Path, original: dict, patch_size: int, tokenizer) -> list:
    from transformers import VideoLlama3ImageProcessorPil

    def optional_config(name: str) -> dict:
        return load_config_file(folder / name) if (folder / name).is_file() else {}

    image_config = optional_config("preprocessor_config.json")
    processor_config = optional_config("processor_config.json")
    if image_config.get("patch_size", patch_size) != patch_size:
        raise ConversionError(f"preprocessor patch_size {image_config['patch_size']} != weights' {patch_size}.")
    min_tokens, max_tokens = image_config.get("min_tokens", 16), image_config.get("max_tokens", 16384)
    common = {
        "patch_size": patch_size, "image_mean": image_config.get("image_mean", [0.5] * 3),
        "image_std": image_config.get("image_std", [0.5] * 3), "resample": image_config.get("resample", 3),
        "rescale_factor": image_config.get("rescale_factor", 1 / 255),
    }

    def size(merge: int) -> dict:  # token budgets -> pixel budgets at that merge size
        factor = (patch_size * merge) ** 2
        return {"shortest_edge": min_tokens * factor, "longest_edge": max_tokens * factor}

    image_merge, video_merge = processor_config.get("image_merge_size", 1), processor_config.get("video_merge_size", 2)
    image_processor = VideoLlama3ImageProcessorPil(merge_size=image_merge, size=size(image_merge), **common)
    processors = [image_processor]
    video_processor = None
    if is_torchvision_available():
        from transformers import VideoLlama3VideoProcessor

        video_processor = VideoLlama3VideoProcessor(
            merge_size=video_merge, size=size(video_merge), do_sample_frames=True, fps=processor_config.get("fps", 1),
            max_frames=processor_config.get("max_frames", 180),
            use_token_compression=bool(original.get("use_token_compression", True)), **common,
        )
        processors.append(video_processor)
    if tokenizer is None:
        return processors
    from transformers import VideoLlama3Processor

    from ..processing.chat_templates import videollama3_chat_template

    return [VideoLlama3Processor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                                 chat_template=videollama3_chat_template("<image>", "<|video_pad|>"))]


def convert(source, config_file=None, presets_file=None) -> ConversionResult:
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    original = load_config_file(config_file or folder / "config.json")
    if original.get("model_type") not in (None, "videollama3_qwen2"):
        raise ConversionError(f"expected a videollama3_qwen2 config, got model_type={original.get('model_type')!r}.")
    overrides = load_presets({"videollama3": {}}, presets_file)["videollama3"]
    files = checkpoint_files(source)
    shapes = read_checkpoint_shapes(files)
    vision, text = vision_config(original, shapes), text_config(original, shapes)
    notes = []
    tokenizer = find_tokenizer(folder)
    image_id, video_id = token_ids(original, tokenizer, text["vocab_size"], overrides, notes)
    config = VideoLlama3Config(vision_config=vision, text_config=text, image_token_id=image_id,
                               video_token_id=video_id, tie_word_embeddings=text["tie_word_embeddings"])
    logger.info("VideoLLaMA3: vision %d layers (hidden %d, patch %d) + Qwen2 %d layers (hidden %d, vocab %d, %s head) "
                "from %d file(s)", vision["num_hidden_layers"], vision["hidden_size"], vision["patch_size"],
                text["num_hidden_layers"], text["hidden_size"], text["vocab_size"],
                "tied" if text["tie_word_embeddings"] else "untied", len(files))
    model = build_empty_model(VideoLlama3ForConditionalGeneration, config)
    load_shards_into_model(model, files, lambda state: rename_state_dict(state, ORIGINAL_TO_CONVERTED_KEY_MAPPING))
    model.config.dtype = shapes["model.embed_tokens.weight"][1]
    model.eval()
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return ConversionResult(model=model, processors=build_processors(folder, original, vision["patch_size"], tokenizer),
                            notes=notes)
