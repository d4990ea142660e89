"""Convert the released Emu3 AR models (`BAAI/Emu3-Chat`, `BAAI/Emu3-Gen`, `BAAI/Emu3-Stage1`: remote-code
`Emu3ForCausalLM` with a tiktoken vocabulary) and their vision tokenizer (`BAAI/Emu3-VisionTokenizer`) into
transformers' own `Emu3ForConditionalGeneration` + `Emu3Processor` (model type `emu3`: plain transformers loads the
folder; with vistok imported, the Auto classes load it as vistok's same-name subclasses, `modeling/modeling_emu3.py`).

Accepted SOURCE: a folder laid out like the Hub repos: `config.json` (`model_type: Emu3`), `model.safetensors` or
sharded `model-0000x-of-0000y.safetensors` + `model.safetensors.index.json` (converted shard by shard),
`emu3.tiktoken` (base64 BPE ranks), `emu3_vision_tokens.txt` (image and visual tokens, one a line),
`tokenizer_config.json` and `generation_config.json` (both optional); or its Hub id.

The vision tokenizer comes from `--vision-tokenizer` (a local folder or a Hub id), else from a `vision_tokenizer/`
folder inside SOURCE, else from the Hub (`BAAI/Emu3-VisionTokenizer`). Its weights are mapped as `vistok-convert
emu3-vq` maps them, under `model.vqmodel.`; its `preprocessor_config.json` sets the image processor.

Examples::

    vistok-convert emu3 BAAI/Emu3-Chat converted/emu3-chat --dtype bfloat16
    vistok-convert emu3 path/to/Emu3-Gen converted/emu3-gen --vision-tokenizer path/to/Emu3-VisionTokenizer

What changes on the way (the choices of transformers' own `convert_emu3_weights_to_hf.py`, so the result matches
`Emu3-community/Emu3-Chat-hf`): the LLM moves under `model.text_model.`; the tokenizer becomes a fast (`tokenizers`)
byte-level BPE with the same ids; the reserved `<|extra_0|>` becomes the image placeholder `<image>` (same id),
which `Emu3Processor` expands and the model fills with the image's visual tokens and `<|extra_200|>` row ends.
"""

import base64
import binascii
from pathlib import Path

from transformers import Emu3Config, Emu3ForConditionalGeneration, Emu3ImageProcessor, Emu3Processor, GenerationConfig

from ..processing.chat_templates import EMU3_CHAT_TEMPLATE
from .convert_emu3_vq import build_config as build_vq_config
from .convert_emu3_vq import convert_state_dict as convert_vq_state_dict
from .utils import (
    ConversionError,
    ConversionResult,
    HubFiles,
    build_empty_model,
    checkpoint_files,
    config_disagreements,
    count_layers,
    download_release,
    find_checkpoint_file,
    hub_repo_id,
    llm_config_fields,
    load_checkpoint,
    load_config_file,
    load_shards_into_model,
    logger,
    read_checkpoint_shapes,
    rename_state_dict,
    require_shape,
)


HUB_FILES = HubFiles(
    required=(("config.json",), ("model-*-of-*.safetensors", "model.safetensors"), ("emu3.tiktoken",),
              ("emu3_vision_tokens.txt",)),
    optional=("model.safetensors.index.json", "tokenizer_config.json", "generation_config.json"),
)
VISION_TOKENIZER_HUB_ID = "BAAI/Emu3-VisionTokenizer"
VISION_TOKENIZER_HUB_FILES = HubFiles(required=(("config.json",), ("model.safetensors",)),
                                      optional=("preprocessor_config.json",))

# the pre-tokenization regex of the released `tokenization_emu3.py` (single digits, unlike cl100k's `\p{N}{1,3}`)
PRETOKENIZE_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                       r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
# the release's special tokens, numbered right after the BPE ranks, then the lines of `emu3_vision_tokens.txt`
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in range(205)))
# transformers' Emu3 fills `<image>` placeholders; like its converter, the reserved `<|extra_0|>` id becomes `<image>`
IMAGE_PLACEHOLDER, RESERVED_FOR_PLACEHOLDER = "<image>", "<|extra_0|>"
# tokenizer_config.json field -> (default, name of the tokenizer attribute Emu3Processor reads)
NAMED_TOKENS = {
    "img_token": ("<|image token|>", "image_wrapper_token"), "boi_token": ("<|image start|>", "boi_token"),
    "eoi_token": ("<|image end|>", "eoi_token"), "eol_token": ("<|extra_200|>", "eol_token"),
    "eof_token": ("<|extra_201|>", "eof_token"),
}
# original config.json id field -> the converted tokenizer's attribute naming that token
TOKEN_ID_FIELDS = {"pad_token_id": "pad_token", "bos_token_id": "bos_token", "eos_token_id": "eos_token",
                   "img_token_id": "image_wrapper_token", "boi_token_id": "boi_token", "eoi_token_id": "eoi_token",
                   "eol_token_id": "eol_token", "eof_token_id": "eof_token"}
VISUAL_TOKEN_PREFIX = "<|visual token "
RELEASE = "Emu3 AR (Emu3ForCausalLM)"

# fmt: off
LLM_MAPPING = [
    (r"model\.((embed_tokens|norm)\.weight)",                                        r"model.text_model.\1"),
    (r"model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj\.weight)",                      r"model.text_model.layers.\1.\2"),
    (r"model\.layers\.(\d+)\.(mlp\.(gate|up|down)_proj\.weight)",                    r"model.text_model.layers.\1.\2"),
    (r"model\.layers\.(\d+)\.((input|post_attention)_layernorm\.weight)",            r"model.text_model.layers.\1.\2"),
    (r"lm_head\.weight",                                                            r"lm_head.weight"),
]
# fmt: on
# RoPE tables: non-persistent in the original code, but present in checkpoints saved with buffers; transformers
# recomputes them
DROPPED = [r"model\.layers\.\d+\.self_attn\.rotary_emb\.(inv_freq|cos_cached|sin_cached)"]
VQ_PREFIX = "model.vqmodel."


# ------------------------------------------------------------------------------------------------------- tokenizer
def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """`{token bytes: rank}` of a tiktoken BPE file (`<base64 token> <rank>` per line); ranks must be 0..n-1."""
    ranks = {}
    for number, line in enumerate(Path(path).read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise ConversionError(f"{path}, line {number}: expected '<base64 token> <rank>', got {line[:80]!r}.") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ConversionError(f"the BPE ranks of {path} are not 0..{len(ranks) - 1} without gaps or repeats.")
    return ranks


def read_vision_tokens(path: Path) -> list[str]:
    tokens = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    visual = [t for t in tokens if t.startswith(VISUAL_TOKEN_PREFIX)]
    expected = [f"{VISUAL_TOKEN_PREFIX}{k:06d}|>" for k in range(len(visual))]
    if visual != expected:
        raise ConversionError(f"{path}: the visual tokens are not '<|visual token 000000|>' ... numbered 0..n-1 in order.")
    return tokens


def build_tokenizer(folder: Path):
    """The release's tiktoken vocabulary as a transformers fast tokenizer with the same ids: byte-level BPE over the
    release's pre-tokenization regex (NFC-normalised input, like the original), then the special tokens in the
    original order (`SPECIAL_TOKENS`, then `emu3_vision_tokens.txt`), `<|extra_0|>` renamed `<image>`."""
    from tokenizers import normalizers
    from transformers import TokenizersBackend
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class ReleaseTikTokenConverter(TikTokenConverter):
        """transformers' tiktoken -> `tokenizers` conversion, reading the BPE file without the tiktoken package."""

        @staticmethod
        def load_tiktoken_bpe(path):
            return read_tiktoken_ranks(path)

    for name in ("emu3.tiktoken", "emu3_vision_tokens.txt"):
        if not (folder / name).is_file():
            raise ConversionError(f"{folder} has no {name}; an Emu3 AR release ships its tiktoken vocabulary with it.")
    ranks = read_tiktoken_ranks(folder / "emu3.tiktoken")
    specials = [IMAGE_PLACEHOLDER if t == RESERVED_FOR_PLACEHOLDER else t for t in SPECIAL_TOKENS]
    specials += read_vision_tokens(folder / "emu3_vision_tokens.txt")
    backend = ReleaseTikTokenConverter(vocab_file=str(folder / "emu3.tiktoken"), pattern=PRETOKENIZE_PATTERN,
                                       extra_special_tokens=specials).converted()
    backend.normalizer = normalizers.NFC()
    misplaced = [t for i, t in enumerate(specials) if backend.token_to_id(t) != len(ranks) + i]
    if misplaced:
        raise ConversionError(f"special tokens {misplaced[:5]} do not follow the {len(ranks)} BPE ranks in order.")

    original = load_config_file(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    named = {attribute: original.get(field, default) for field, (default, attribute) in NAMED_TOKENS.items()}
    named["image_token"] = IMAGE_PLACEHOLDER
    core = {k: original.get(k, default) for k, default in
            (("bos_token", "<|extra_203|>"), ("eos_token", "<|extra_204|>"), ("pad_token", "<|endoftext|>"))}
    unknown = [t for t in [*named.values(), *core.values()] if backend.token_to_id(t) is None]
    if unknown:
        raise ConversionError(f"tokenizer_config.json names tokens the vocabulary lacks: {unknown}.")
    kwargs = {"model_max_length": original["model_max_length"]} if "model_max_length" in original else {}
    # left padding: batched prompts end where generation starts (transformers' Emu3 conversion does the same)
    return TokenizersBackend(tokenizer_object=backend, extra_special_tokens=named, padding_side="left",
                             clean_up_tokenization_spaces=False, **core, **kwargs)


# ------------------------------------------------------------------------------------------------- vision tokenizer
def find_vision_tokenizer(folder: Path, vision_tokenizer=None) -> Path:
    """The vision tokenizer folder: `vision_tokenizer` (local folder or Hub id), else `SOURCE/vision_tokenizer/`, else
    `BAAI/Emu3-VisionTokenizer` from the Hub (only its config, weights and preprocessor config)."""
    if vision_tokenizer is None and (folder / "vision_tokenizer" / "config.json").is_file():
        return folder / "vision_tokenizer"
    vision_tokenizer = str(vision_tokenizer or VISION_TOKENIZER_HUB_ID)
    repo_id = hub_repo_id("emu3-vq", vision_tokenizer)
    if repo_id is None:
        return Path(vision_tokenizer)
    logger.info("vision tokenizer: %s from the Hub", repo_id)
    return download_release(repo_id, VISION_TOKENIZER_HUB_FILES)


def build_image_processor(folder: Path, spatial_factor: int) -> Emu3ImageProcessor:
    """transformers' `Emu3ImageProcessor` with the vision tokenizer's `preprocessor_config.json` settings (smart
    resize to multiples of the spatial factor within [min_pixels, max_pixels], bicubic, [-1, 1])."""
    path = folder / "preprocessor_config.json"
    original = load_config_file(path) if path.is_file() else {}
    if original.get("spatial_factor", spatial_factor) != spatial_factor:
        raise ConversionError(f"{path} says spatial_factor={original['spatial_factor']} but the vision tokenizer "
                              f"downsamples by {spatial_factor}.")
    kwargs = {k: original[k] for k in ("do_resize", "resample", "do_rescale", "rescale_factor", "do_normalize",
                                       "do_convert_rgb", "min_pixels", "max_pixels") if k in original}
    return Emu3ImageProcessor(image_mean=original.get("image_mean", [0.5] * 3),
                              image_std=original.get("image_std", [0.5] * 3), spatial_factor=spatial_factor, **kwargs)


# ------------------------------------------------------------------------------------------------------- the model
def text_config(original: dict, shapes: dict, tokenizer) -> dict:
    """`Emu3TextConfig` fields: sizes from the weight shapes, head count, RoPE and token ids from the config."""
    if "num_attention_heads" not in original:
        raise ConversionError("config.json lacks num_attention_heads (not recoverable from the weights).")
    vocab, hidden = require_shape(shapes, "model.embed_tokens.weight", RELEASE)
    heads = original["num_attention_heads"]
    head_dim = require_shape(shapes, "model.layers.0.self_attn.q_proj.weight", RELEASE)[0] // heads
    kv_heads = require_shape(shapes, "model.layers.0.self_attn.k_proj.weight", RELEASE)[0] // head_dim
    if head_dim * heads != hidden:
        raise ConversionError(f"q_proj gives head_dim {head_dim} for {heads} heads, but the hidden size is {hidden}.")
    if len(tokenizer) != vocab:
        raise ConversionError(f"the tokenizer has {len(tokenizer)} tokens but the embedding has {vocab} rows.")
    if original.get("rope_scaling"):
        raise ConversionError(f"rope_scaling={original['rope_scaling']} is not part of any Emu3 release; refusing "
                              "to guess how transformers' Emu3 should apply it.")
    fields = {k: v for k, v in llm_config_fields(original).items()
              if k not in ("use_sliding_window", "sliding_window", "max_window_layers")}  # not Emu3TextConfig fields
    return fields | {
        "vocab_size": vocab, "hidden_size": hidden, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "intermediate_size": require_shape(shapes, "model.layers.0.mlp.gate_proj.weight", RELEASE)[0],
        "num_hidden_layers": count_layers(shapes, "model.layers"),
        "tie_word_embeddings": "lm_head.weight" not in shapes,
        "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def check_token_ids(original: dict, tokenizer) -> None:
    """The ids config.json declares must be the tokenizer's (they are the same vocabulary)."""
    wrong = []
    for field, attribute in TOKEN_ID_FIELDS.items():
        token = getattr(tokenizer, attribute)
        if field in original and original[field] != tokenizer.convert_tokens_to_ids(token):
            wrong.append(f"{field}={original[field]} but {token} is {tokenizer.convert_tokens_to_ids(token)}")
    if wrong:
        raise ConversionError("config.json and the tokenizer disagree: " + "; ".join(wrong))


def shard_converter(vq_keys: set):
    """Maps one file's tensors: LLM keys (`model.*`, `lm_head.*`) by `LLM_MAPPING`, vision tokenizer keys as
    `vistok-convert emu3-vq` maps them, under `model.vqmodel.`."""
    def convert_shard(state_dict: dict) -> tuple[dict, list, list]:
        vq = {k: state_dict.pop(k) for k in list(state_dict) if k in vq_keys}
        converted, unmapped, dropped = rename_state_dict(state_dict, LLM_MAPPING, DROPPED)
        if vq:
            vq_converted, vq_unmapped = convert_vq_state_dict(vq)
            converted |= {VQ_PREFIX + k: v for k, v in vq_converted.items()}
            unmapped += [f"vision tokenizer: {k}" for k in vq_unmapped]
        return converted, unmapped, dropped

    return convert_shard


def convert(source, config_file=None, presets_file=None, vision_tokenizer=None) -> ConversionResult:
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    original = load_config_file(config_file or folder / "config.json")
    model_type = original.get("model_type")
    if model_type == "emu3":
        raise ConversionError("this is already a transformers Emu3 checkpoint (model_type 'emu3'): load it with "
                              "Emu3ForConditionalGeneration.from_pretrained, no conversion needed.")
    if model_type not in (None, "Emu3"):
        raise ConversionError(f"expected an Emu3 AR config (model_type 'Emu3'), got model_type={model_type!r}.")
    files = checkpoint_files(source)
    shapes = read_checkpoint_shapes(files)
    tokenizer = build_tokenizer(folder)
    check_token_ids(original, tokenizer)
    text = text_config(original, shapes, tokenizer)

    vq_folder = find_vision_tokenizer(folder, vision_tokenizer)
    vq_file = find_checkpoint_file(vq_folder, preferred=("model.safetensors", "pytorch_model.bin"))
    vq_original = load_config_file(vq_folder / "config.json") if (vq_folder / "config.json").is_file() else None
    vq_state = load_checkpoint(vq_file)
    vq_config = build_vq_config(vq_state, vq_original)
    vq_keys = set(vq_state)
    del vq_state  # read again with the LLM shards, so it is converted like them (assigned, not copied)
    num_visual = sum(1 for t in tokenizer.get_vocab() if t.startswith(VISUAL_TOKEN_PREFIX))
    if num_visual != vq_config.codebook_size:
        raise ConversionError(f"emu3_vision_tokens.txt has {num_visual} visual tokens but the vision tokenizer "
                              f"{vq_folder} has {vq_config.codebook_size} codes: is it the matching vision tokenizer?")
    spatial_factor = 2 ** (len(vq_config.channel_multiplier) - 1)
    if spatial_factor != 8:
        raise ConversionError(f"the vision tokenizer downsamples by {spatial_factor}, but transformers' Emu3Processor "
                              "lays out images for a factor of 8 (as every Emu3 release).")

    config = Emu3Config(text_config=text, vq_config=vq_config.to_dict(), vocabulary_map=tokenizer.get_vocab(),
                        tie_word_embeddings=text["tie_word_embeddings"])
    logger.info("Emu3: %d-layer LLM (hidden %d, vocab %d) from %d file(s) + vision tokenizer %s (%d codes)",
                text["num_hidden_layers"], text["hidden_size"], text["vocab_size"], len(files), vq_folder,
                vq_config.codebook_size)
    model = build_empty_model(Emu3ForConditionalGeneration, config)
    load_shards_into_model(model, [*files, vq_file], shard_converter(vq_keys))
    model.config.dtype = shapes["model.embed_tokens.weight"][1]
    model.eval()

    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    model.generation_config.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id)
    processor = Emu3Processor(build_image_processor(vq_folder, spatial_factor), tokenizer,
                              chat_template=EMU3_CHAT_TEMPLATE)
    notes = config_disagreements(original, {"vocab_size": text["vocab_size"], "hidden_size": text["hidden_size"],
                                            "num_key_value_heads": text["num_key_value_heads"],
                                            "num_hidden_layers": text["num_hidden_layers"]})
    if "image_area" in original:
        notes.append(f"the release generates images of image_area={original['image_area']} pixels: pass "
                     f"`image_area={original['image_area']}` to the processor with return_for_image_generation=True")
    return ConversionResult(model=model, processors=[processor], notes=notes)
