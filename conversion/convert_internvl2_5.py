"""Convert released InternVL2.5 checkpoints (OpenGVLab/InternVL2_5-*, ``model_type: internvl_chat``) into
transformers' own ``InternVLForConditionalGeneration`` (``model_type: internvl``): the written folder needs no vistok
(vistok's same-name subclass only adds input checks).

Accepted SOURCE: a folder laid out like the hub repos: ``config.json`` and ``model.safetensors`` or sharded
``model-0000x-of-0000y.safetensors`` + ``model.safetensors.index.json`` (converted shard by shard), optional
``generation_config.json`` and tokenizer files.

Both vision flavours (InternViT-300M: LayerNorm + qkv bias; InternViT-6B: RMSNorm + QK-norm, no bias) and both LLM
families (Qwen2.5, and InternLM2.5, which becomes a Llama with its packed ``wqkv`` split per KV group) are handled.
Sizes come from tensor shapes; head counts (not visible in shapes) from the original config.
"""

import math
from pathlib import Path

import torch
from transformers import GenerationConfig, GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration
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
    split_fused_qkv,
)


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# the special tokens InternVL adds to its LLM's tokenizer, as InternVLProcessor expects them on the tokenizer
IMAGE_SPECIAL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                        "video_token": "<video>"}
# `<IMG_CONTEXT>` of the released tokenizers, by LLM vocabulary size, for sources without tokenizer files
RELEASED_IMAGE_TOKEN_IDS = {151674: 151667, 92553: 92546}

_V = r"vision_model\.encoder\.layers\.(\d+)\."
_T = r"model.vision_tower.encoder.layer.\1."
# fmt: off
VISION_MAPPING = [
    (r"vision_model\.embeddings\.class_embedding",                r"model.vision_tower.embeddings.cls_token"),
    (r"vision_model\.embeddings\.position_embedding",             r"model.vision_tower.embeddings.position_embeddings"),
    (r"vision_model\.embeddings\.patch_embedding\.(weight|bias)", r"model.vision_tower.embeddings.patch_embeddings.projection.\1"),
    (_V + r"ls1",                                                 _T + r"lambda_1"),
    (_V + r"ls2",                                                 _T + r"lambda_2"),
    (_V + r"norm1\.(weight|bias)",                                _T + r"layernorm_before.\2"),
    (_V + r"norm2\.(weight|bias)",                                _T + r"layernorm_after.\2"),
    (_V + r"attn\.(q|k|v)\.(weight|bias)",                        _T + r"attention.\2_proj.\3"),  # split attn.qkv
    (_V + r"attn\.(q_norm|k_norm)\.weight",                       _T + r"attention.\2.weight"),
    (_V + r"attn\.proj\.(weight|bias)",                           _T + r"attention.projection_layer.\2"),
    (_V + r"mlp\.(fc1|fc2)\.(weight|bias)",                       _T + r"mlp.\2.\3"),
    (r"mlp1\.0\.(weight|bias)",                                   r"model.multi_modal_projector.layer_norm.\1"),
    (r"mlp1\.1\.(weight|bias)",                                   r"model.multi_modal_projector.linear_1.\1"),
    (r"mlp1\.3\.(weight|bias)",                                   r"model.multi_modal_projector.linear_2.\1"),
]
QWEN2_MAPPING = [
    (r"language_model\.model\.(.+)",                              r"model.language_model.\1"),
    (r"language_model\.lm_head\.weight",                          r"lm_head.weight"),
]
_L = r"language_model\.model\.layers\.(\d+)\."
_M = r"model.language_model.layers.\1."
INTERNLM2_MAPPING = [
    (r"language_model\.model\.tok_embeddings\.weight",            r"model.language_model.embed_tokens.weight"),
    (r"language_model\.model\.norm\.weight",                      r"model.language_model.norm.weight"),
    (r"language_model\.output\.weight",                           r"lm_head.weight"),
    (_L + r"attention\.(q|k|v)\.weight",                          _M + r"self_attn.\2_proj.weight"),  # after split_wqkv
    (_L + r"attention\.wo\.weight",                               _M + r"self_attn.o_proj.weight"),
    (_L + r"feed_forward\.w1\.weight",                            _M + r"mlp.gate_proj.weight"),
    (_L + r"feed_forward\.w3\.weight",                            _M + r"mlp.up_proj.weight"),
    (_L + r"feed_forward\.w2\.weight",                            _M + r"mlp.down_proj.weight"),
    (_L + r"attention_norm\.weight",                              _M + r"input_layernorm.weight"),
    (_L + r"ffn_norm\.weight",                                    _M + r"post_attention_layernorm.weight"),
]
# fmt: on


def _shape(shapes: dict, key: str) -> tuple[int, ...]:
    return require_shape(shapes, key, "InternVL2.5 (internvl_chat)")


def _llm_family(original: dict, shapes: dict) -> str:
    if any(k.startswith("language_model.model.tok_embeddings.") for k in shapes):
        return "internlm2"
    if any(k.startswith("language_model.model.embed_tokens.") for k in shapes):
        return "qwen2"
    architectures = original.get("llm_config", {}).get("architectures")
    raise ConversionError(f"unsupported InternVL LLM {architectures}: expected Qwen2 or InternLM2 weights.")


def vision_config(original: dict, shapes: dict) -> dict:
    vision = original.get("vision_config", {})
    hidden, channels, patch, _ = _shape(shapes, "vision_model.embeddings.patch_embedding.weight")
    num_positions = _shape(shapes, "vision_model.embeddings.position_embedding")[1]
    grid = math.isqrt(num_positions - 1)
    if grid * grid != num_positions - 1:
        raise ConversionError(f"position table of {num_positions} rows is not 1 + a square grid.")
    prefix = "vision_model.encoder.layers.0."
    has_qk_norm = prefix + "attn.q_norm.weight" in shapes
    norm_type = "layer_norm" if prefix + "norm1.bias" in shapes else "rms_norm"
    if vision.get("norm_type", norm_type) != norm_type:
        raise ConversionError(f"config says norm_type={vision['norm_type']!r} but the weights are {norm_type}.")
    if "num_attention_heads" not in vision:
        raise ConversionError("vision_config lacks num_attention_heads (not recoverable from the weights).")
    return {
        "hidden_size": hidden, "num_channels": channels, "patch_size": patch, "image_size": grid * patch,
        "num_hidden_layers": count_layers(shapes, "vision_model.encoder.layers."),
        "num_attention_heads": vision["num_attention_heads"],
        "intermediate_size": _shape(shapes, prefix + "mlp.fc1.weight")[0],
        "attention_bias": prefix + "attn.qkv.bias" in shapes, "use_qk_norm": has_qk_norm, "norm_type": norm_type,
        "hidden_act": vision.get("hidden_act", "gelu"), "layer_norm_eps": vision.get("layer_norm_eps", 1e-6),
        "attention_dropout": vision.get("attention_dropout", 0.0),
        "projection_dropout": vision.get("attention_dropout", 0.0),
        "layer_scale_init_value": vision.get("initializer_factor", 0.1),
    }


def text_config(original: dict, shapes: dict, family: str) -> dict:
    llm = original.get("llm_config", {})
    if "num_attention_heads" not in llm:
        raise ConversionError("llm_config lacks num_attention_heads (not recoverable from the weights).")
    heads = llm["num_attention_heads"]
    if family == "qwen2":
        vocab, hidden = _shape(shapes, "language_model.model.embed_tokens.weight")
        prefix = "language_model.model.layers.0."
        head_dim = llm.get("head_dim") or hidden // heads
        kv_heads = _shape(shapes, prefix + "self_attn.k_proj.weight")[0] // head_dim
        intermediate = _shape(shapes, prefix + "mlp.gate_proj.weight")[0]
        layers = count_layers(shapes, "language_model.model.layers.")
        extra = {}  # Qwen2 attention always has q/k/v biases
    else:
        vocab, hidden = _shape(shapes, "language_model.model.tok_embeddings.weight")
        prefix = "language_model.model.layers.0."
        head_dim = hidden // heads
        kv_heads = (_shape(shapes, prefix + "attention.wqkv.weight")[0] // head_dim - heads) // 2
        intermediate = _shape(shapes, prefix + "feed_forward.w1.weight")[0]
        layers = count_layers(shapes, "language_model.model.layers.")
        extra = {"attention_bias": bool(llm.get("bias", False)), "mlp_bias": False, "head_dim": head_dim}
    if llm.get("num_key_value_heads", kv_heads) != kv_heads:
        raise ConversionError(f"llm_config says {llm['num_key_value_heads']} KV heads, the weights have {kv_heads}.")
    return llm_config_fields(llm) | extra | {
        "model_type": "llama" if family == "internlm2" else "qwen2", "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "tie_word_embeddings": False,
    }


def split_wqkv(key: str, tensor: torch.Tensor, num_heads: int, num_kv_heads: int) -> dict[str, torch.Tensor]:
    """InternLM2 ``attention.wqkv``: rows grouped per KV head as [its q heads, k, v] -> separate q / k / v."""
    group = num_heads // num_kv_heads + 2
    head_dim = tensor.shape[0] // (num_kv_heads * group)
    grouped = tensor.reshape(num_kv_heads, group, head_dim, tensor.shape[-1])
    stem = key.rsplit(".wqkv.", 1)[0]
    return {
        f"{stem}.q.weight": grouped[:, :-2].reshape(-1, tensor.shape[-1]).clone(),
        f"{stem}.k.weight": grouped[:, -2].reshape(-1, tensor.shape[-1]).clone(),
        f"{stem}.v.weight": grouped[:, -1].reshape(-1, tensor.shape[-1]).clone(),
    }


def shard_converter(family: str, text: dict):
    rules = VISION_MAPPING + (QWEN2_MAPPING if family == "qwen2" else INTERNLM2_MAPPING)

    def convert_shard(state_dict: dict) -> tuple[dict, list, list]:
        # ViT `attn.qkv` rows are [q; k; v] -> attn.q / attn.k / attn.v (cloned: each becomes a parameter of its own)
        unfused = {key: tensor.clone() if ".attn.q." in key or ".attn.k." in key or ".attn.v." in key else tensor
                   for key, tensor in split_fused_qkv(state_dict, "qkv", ("q", "k", "v")).items()}
        for key in [k for k in unfused if k.endswith(".attention.wqkv.weight")]:
            unfused.update(split_wqkv(key, unfused.pop(key), text["num_attention_heads"], text["num_key_value_heads"]))
        return rename_state_dict(unfused, rules)

    return convert_shard


def sentencepiece_normalizer(model_file: Path):
    """A tokenizers normalizer that prepares text the way the sentencepiece model in ``model_file`` does before its
    BPE: its character map (if any), its whitespace cleanup (``remove_extra_whitespaces``: leading, trailing and
    repeated spaces), its dummy prefix (``add_dummy_prefix``: a leading space) and spaces written as ``▁``.

    tokenizers applies the normalizer to each stretch of text between added tokens, which is what the original
    ``InternLM2Tokenizer`` does by calling sentencepiece on each such stretch: so, unlike transformers' Llama
    conversion (a dummy prefix once, at the start of the text, and only if it has no leading space), every stretch
    after ``<|im_start|>``, ``</img>``, ... gets the prefix when the model asks for it, and none when it does not."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, normalizers

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    spec = proto.normalizer_spec
    steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
    if spec.remove_extra_whitespaces:
        # \A / \z: tokenizers' regexes read ^ and $ at every line break
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    return normalizers.Sequence(steps), spec.add_dummy_prefix


def load_internlm2_tokenizer(folder: Path, **kwargs):
    """``InternLM2Tokenizer`` (remote code): sentencepiece BPE with byte fallback that prepends ``<s>``. The vocabulary,
    merges and added tokens are read by transformers' ``LlamaTokenizer``; the text is then cut as sentencepiece cuts
    it (``sentencepiece_normalizer``) and the result saved as a plain ``TokenizersBackend`` (``tokenizer.json``), so
    that reloading does not rebuild Llama's own pre-tokenizer. Checked token for token against the original class
    (tests/fixtures/internvl2_5_internlm2_chat.json)."""
    from tokenizers import decoders
    from transformers import LlamaTokenizer, TokenizersBackend

    config = load_config_file(folder / "tokenizer_config.json")
    llama = LlamaTokenizer.from_pretrained(folder, add_bos_token=config.get("add_bos_token", True),
                                           add_eos_token=config.get("add_eos_token", False))
    backend = llama.backend_tokenizer
    backend.normalizer, add_dummy_prefix = sentencepiece_normalizer(folder / "tokenizer.model")
    backend.pre_tokenizer = None
    strip_dummy_prefix = [decoders.Strip(content=" ", left=1)] if add_dummy_prefix else []
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip_dummy_prefix])
    special = {name: config.get(name, default) for name, default in
               (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"), ("pad_token", "</s>"))}
    return TokenizersBackend(tokenizer_object=backend, **special, **kwargs)


def find_tokenizer(folder: Path):
    """The release's tokenizer (None without tokenizer files) with InternVL's image tokens as named special tokens."""
    loaders = {"InternLM2Tokenizer": load_internlm2_tokenizer, "InternLM2TokenizerFast": load_internlm2_tokenizer}
    tokenizer = load_release_tokenizer(folder, IMAGE_SPECIAL_TOKENS, loaders)
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        missing = [t for t in IMAGE_SPECIAL_TOKENS.values() if t != "<video>" and t not in vocab]
        if missing:
            raise ConversionError(f"the tokenizer in {folder} lacks InternVL's special tokens {missing}.")
    return tokenizer


def image_token_id(tokenizer, vocab_size: int, overrides: dict, notes: list) -> int:
    if "image_token_id" in overrides:
        return int(overrides["image_token_id"])
    if tokenizer is not None:
        return tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    if vocab_size in RELEASED_IMAGE_TOKEN_IDS:
        token_id = RELEASED_IMAGE_TOKEN_IDS[vocab_size]
    else:
        token_id = vocab_size - 1
        notes.append(f"no tokenizer files: assumed <img>, </img>, <IMG_CONTEXT> are the last three ids "
                     f"({vocab_size - 3}..{token_id}); otherwise pass --preset-overrides with "
                     '{"internvl2_5": {"image_token_id": N}}')
    return token_id


def tile_size(original: dict, vision: dict) -> int:
    """Side of the tiles the model is fed: ``force_image_size`` when set (the ViT then resizes its position table,
    bicubic, as transformers' InternVL vision embeddings do), else the position table's own size."""
    size = original.get("force_image_size") or vision["image_size"]
    if size % vision["patch_size"] or (size // vision["patch_size"]) % 2:
        raise ConversionError(f"tile size {size} must be an even number of {vision['patch_size']}-pixel patches "
                              "(pixel shuffle 0.5 merges 2x2 patches).")
    return size


def build_processors(original: dict, vision: dict, tokenizer, image_seq_length: int, notes: list) -> list:
    side = tile_size(original, vision)
    size = {"height": side, "width": side}
    tiling = dict(size=size, crop_to_patches=bool(original.get("dynamic_image_size", True)),
                  min_patches=original.get("min_dynamic_patch", 1), max_patches=original.get("max_dynamic_patch", 12),
                  image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    if original.get("use_thumbnail", True):
        image_processor = GotOcr2ImageProcessorPil(**tiling)
    else:  # transformers' tiling always appends the thumbnail; the original only with use_thumbnail
        from ..processing.image_processing_internvl2_5 import InternVLChatImageProcessorPil

        image_processor = InternVLChatImageProcessorPil(**tiling, use_thumbnail=False)
    processors = [image_processor]
    if is_torchvision_available():
        from transformers import InternVLVideoProcessor

        # the original `load_video` samples `num_segments` (8 by default) frames at segment centres
        processors.append(InternVLVideoProcessor(size=size, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                                                 do_sample_frames=True, num_frames=8, initial_shift=True))
    if tokenizer is None:
        return processors
    from transformers import InternVLProcessor

    from ..processing.chat_templates import INTERNVL_CONVERSATION_TEMPLATES, internvl2_5_chat_template

    conversation_template = original.get("template", "internvl2_5")
    if conversation_template not in INTERNVL_CONVERSATION_TEMPLATES:
        notes.append(f"template={conversation_template!r}: the chat template written follows 'internvl2_5' (known: "
                     f"{sorted(INTERNVL_CONVERSATION_TEMPLATES)}); prompts may differ from the original chat()")
        conversation_template = "internvl2_5"
    # the original model takes `system_message` from its config when present, else from the conversation template
    system_message = original.get("system_message", INTERNVL_CONVERSATION_TEMPLATES[conversation_template][0])
    video_processor = processors[1] if len(processors) > 1 else None
    return [InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                              image_seq_length=image_seq_length,
                              chat_template=internvl2_5_chat_template(system_message, conversation_template))]


def convert(source, config_file=None, presets_file=None) -> ConversionResult:
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    original = load_config_file(config_file or folder / "config.json")
    if original.get("model_type") not in (None, "internvl_chat"):
        raise ConversionError(f"expected an internvl_chat config, got model_type={original.get('model_type')!r}.")
    if original.get("ps_version", "v2") != "v2":
        raise ConversionError(f"ps_version={original['ps_version']!r}: transformers' InternVL implements v2 only.")
    overrides = load_presets({"internvl2_5": {}}, presets_file)["internvl2_5"]
    files = checkpoint_files(source)
    shapes = read_checkpoint_shapes(files)
    family = _llm_family(original, shapes)
    vision, text = vision_config(original, shapes), text_config(original, shapes, family)

    downsample = original.get("downsample_ratio", 0.5)
    projector_in = _shape(shapes, "mlp1.1.weight")[1]
    if projector_in != round(vision["hidden_size"] / downsample**2):
        raise ConversionError(f"mlp1 expects {projector_in} features, pixel shuffle gives "
                              f"{round(vision['hidden_size'] / downsample**2)} (downsample_ratio {downsample}).")
    image_seq_length = round((tile_size(original, vision) // vision["patch_size"]) ** 2 * downsample**2)
    notes = []
    tokenizer = find_tokenizer(folder)
    config = InternVLConfig(
        vision_config=vision, text_config=text, downsample_ratio=downsample, image_seq_length=image_seq_length,
        image_token_id=image_token_id(tokenizer, text["vocab_size"], overrides, notes), projector_hidden_act="gelu",
        vision_feature_layer=original.get("select_layer", -1), vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    logger.info("InternVL2.5: %s ViT (%d layers, hidden %d) + %s LLM (%d layers, hidden %d, vocab %d) from %d file(s)",
                vision["norm_type"], vision["num_hidden_layers"], vision["hidden_size"], family,
                text["num_hidden_layers"], text["hidden_size"], text["vocab_size"], len(files))
    model = build_empty_model(InternVLForConditionalGeneration, config)
    load_shards_into_model(model, files, shard_converter(family, text))
    model.config.dtype = shapes["mlp1.1.weight"][1]
    model.eval()
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    if tokenizer is not None:  # the chat turn ends with <|im_end|> (what the original chat() stops on)
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        model.generation_config.eos_token_id = list(dict.fromkeys([*eos, im_end]))
    processors = build_processors(original, vision, tokenizer, image_seq_length, notes)
    return ConversionResult(model=model, processors=processors, notes=notes)
