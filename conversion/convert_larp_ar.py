"""Convert released LARP generators (hywang66/LARP, `LARP_AR`) into `LARPARForCausalLM`.

SOURCE: the huggingface_hub `PyTorchModelHubMixin` folder of the release (`hywang66/LARP-L-long-AR`,
`hywang66/LARP-L-long-AR-FP`): `config.json` (the `ModelArgs` fields) + `model.safetensors`, or a single checkpoint
file with `--config`. Sizes come from tensor shapes; the fused `wqkv` projection is split into q/k/v.
"""

import torch

from ..modeling.configuration_larp import LARPARConfig
from ..modeling.modeling_larp_ar import LARPARForCausalLM
from .utils import (
    ConversionError,
    ConversionResult,
    count_layers,
    load_into_model,
    logger,
    read_checkpoint_and_config,
    rename_state_dict,
    require_tensor,
)


# fmt: off
ORIGINAL_TO_CONVERTED_KEY_MAPPING = [
    (r"tok_embeddings\.weight",                                r"model.embeddings.token_embedding.weight"),
    (r"cls_embedding\.embedding_table\.weight",                r"model.embeddings.class_embedding.weight"),
    (r"abs_pe",                                                r"model.embeddings.position_embedding"),
    (r"layers\.(\d+)\.attention\.wqkv\.weight",                r"model.layers.\1.self_attn.wqkv.weight"),
    (r"layers\.(\d+)\.attention\.wo\.weight",                  r"model.layers.\1.self_attn.o_proj.weight"),
    (r"layers\.(\d+)\.feed_forward\.w1\.weight",               r"model.layers.\1.mlp.gate_proj.weight"),
    (r"layers\.(\d+)\.feed_forward\.w3\.weight",               r"model.layers.\1.mlp.up_proj.weight"),
    (r"layers\.(\d+)\.feed_forward\.w2\.weight",               r"model.layers.\1.mlp.down_proj.weight"),
    (r"layers\.(\d+)\.(attention_norm|ffn_norm)\.weight",      r"model.layers.\1.\2.weight"),
    (r"norm\.weight",                                          r"model.norm.weight"),
    (r"output\.weight",                                        r"lm_head.weight"),
]
# fmt: on


def build_config(state_dict: dict, original: dict, notes: list) -> LARPARConfig:
    """The `LARPARConfig` a checkpoint describes; what the conversion changes is appended to `notes`."""
    what = "LARP AR generator"
    frame_prediction = bool(original.get("frame_prediction", False))
    if not frame_prediction and original.get("model_type", "class_cond") != "class_cond":
        raise ConversionError(f"model_type {original['model_type']!r} is not supported (released: class_cond).")
    tokens = require_tensor(state_dict, "tok_embeddings.weight", what)
    vocab_size = require_tensor(state_dict, "output.weight", what).shape[0]
    if tokens.shape[0] != vocab_size + int(frame_prediction):
        raise ConversionError(f"tok_embeddings has {tokens.shape[0]} rows for {vocab_size} codes "
                              f"(frame_prediction={frame_prediction}).")
    hidden = tokens.shape[1]
    heads = int(original.get("n_head", 32))
    kv_heads = int(original.get("n_kv_head") or heads)
    if require_tensor(state_dict, "layers.0.attention.wqkv.weight", what).shape[0] != hidden + 2 * kv_heads * (hidden // heads):
        raise ConversionError(f"layers.0.attention.wqkv does not fit {heads} heads / {kv_heads} key-value heads.")
    condition = int(original.get("cls_token_num", 1))
    max_length = int(original.get("max_seq_len", 1024))
    positions = require_tensor(state_dict, "abs_pe", what).shape[1]
    if positions != max_length + condition - 1:
        raise ConversionError(f"abs_pe has {positions} rows, expected max_seq_len + cls_token_num - 1 = "
                              f"{max_length + condition - 1}.")
    if not frame_prediction and condition > 1:
        notes.append(f"cls_token_num={condition} of a class-conditional model: the original embeds the class as ONE "
                     f"token all the same; the other {condition - 1} only lengthen the position table (kept)")
    kwargs = dict(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=count_layers(state_dict, "layers."),
        num_attention_heads=heads, num_key_value_heads=kv_heads,
        intermediate_size=require_tensor(state_dict, "layers.0.feed_forward.w1.weight", what).shape[0],
        rms_norm_eps=float(original.get("norm_eps", 1e-5)), max_position_embeddings=max_length,
        frame_prediction=frame_prediction, num_condition_tokens=condition,
        use_fixed_pe=bool(original.get("use_fixed_pe", False)),
        embedding_dropout=float(original.get("token_dropout_p", 0.1)),
        hidden_dropout=float(original.get("resid_dropout_p", 0.1)),
        attention_dropout=float(original.get("attn_dropout_p", 0.0)),
        initializer_range=float(original.get("initializer_range", 0.02)),
    )
    if float(original.get("drop_path_rate", 0.0)) > 0:
        logger.info("drop_path_rate %s is a training setting and is not ported", original["drop_path_rate"])
    if not frame_prediction:
        classes = require_tensor(state_dict, "cls_embedding.embedding_table.weight", what).shape[0]
        num_classes = int(original.get("num_classes", classes - 1))
        if classes not in (num_classes, num_classes + 1):
            raise ConversionError(f"cls_embedding has {classes} rows for num_classes={num_classes}.")
        kwargs.update(num_classes=num_classes, class_dropout_prob=float(original.get("class_dropout_prob", 0.1))
                      if classes == num_classes + 1 else 0.0)
    try:
        return LARPARConfig(**kwargs)
    except Exception as error:
        raise ConversionError(f"the checkpoint describes an invalid LARP AR configuration: {error}") from error


def convert_state_dict(state_dict: dict, model: LARPARForCausalLM) -> tuple[dict, list]:
    config = model.config
    dropped = []
    if config.use_fixed_pe:
        expected = model.model.embeddings.position_embedding
        if not torch.allclose(state_dict["abs_pe"].reshape(expected.shape).float(), expected.float(), atol=1e-5):
            raise ConversionError("abs_pe is not the sin-cos table use_fixed_pe builds.")
        dropped = ["abs_pe"]
    renamed, unmapped, _ = rename_state_dict(state_dict, ORIGINAL_TO_CONVERTED_KEY_MAPPING, dropped)
    converted = {}
    kv_width = config.num_key_value_heads * config.head_dim
    for key, tensor in renamed.items():
        if key.endswith(".wqkv.weight"):
            parts = tensor.split([config.hidden_size, kv_width, kv_width], dim=0)
            for name, part in zip(("q_proj", "k_proj", "v_proj"), parts):
                converted[key.replace(".wqkv.", f".{name}.")] = part
        elif key == "model.embeddings.position_embedding":
            converted[key] = tensor.reshape(tensor.shape[-2:])
        else:
            converted[key] = tensor
    return converted, unmapped


def convert(source, config_file=None, presets_file=None) -> ConversionResult:
    state_dict, original = read_checkpoint_and_config(source, config_file)
    notes = []
    config = build_config(state_dict, original, notes)
    logger.info("building LARPARForCausalLM (%d layers, %s)", config.num_hidden_layers,
                "frame prediction" if config.frame_prediction else f"{config.num_classes} classes")
    model = LARPARForCausalLM(config).eval()
    converted, unmapped = convert_state_dict(state_dict, model)
    load_into_model(model, converted, unmapped)
    for note in notes:
        logger.info("note: %s", note)
    return ConversionResult(model=model, processors=[], notes=notes)


__all__ = ["build_config", "convert", "convert_state_dict"]
