"""The LARP autoregressive generator (LARP_AR of hywang66/LARP): a LlamaGen-style decoder over LARP codes with learned
absolute positions, class-conditional or conditioned on the tokens of the first frames (frame prediction).

`generate()` (transformers' `GenerationMixin`, KV cache, sampling processors) produces codes that
`LARPModel.decode` turns into a clip. Classifier-free guidance runs the conditional and null-class sequences as one
batched forward per step (`generate(..., cfg_scale=1.25)`), as the original sampler does.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, eager_attention_forward

from .configuration_larp import LARPARConfig
from .layers import get_1d_sincos_pos_embed, init_common_weights


class LARPARRMSNorm(LlamaRMSNorm):
    pass


class LARPARMLP(LlamaMLP):
    pass


class LARPAREmbeddings(nn.Module):
    """Code embeddings, the class embedding (class-conditional models) and absolute positions."""

    def __init__(self, config: LARPARConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size + int(config.frame_prediction), config.hidden_size)
        if config.frame_prediction:
            self.class_embedding = None
        else:
            self.class_embedding = nn.Embedding(config.input_vocab_size - config.vocab_size, config.hidden_size)
        length = config.max_position_embeddings + config.num_condition_tokens - 1
        if config.use_fixed_pe:
            self.register_buffer("position_embedding", self.compute_fixed_positions(), persistent=False)
        else:
            self.position_embedding = nn.Parameter(torch.empty(length, config.hidden_size))
        self.dropout = nn.Dropout(config.embedding_dropout)

    def compute_fixed_positions(self) -> torch.Tensor:
        config = self.config
        length = config.max_position_embeddings + config.num_condition_tokens - 1
        return get_1d_sincos_pos_embed(config.hidden_size, torch.arange(length))

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        vocab_size = self.config.vocab_size
        if self.class_embedding is None:
            embeddings = self.token_embedding(input_ids)
        else:
            is_class = input_ids >= vocab_size
            classes = (input_ids - vocab_size).clamp(min=0)
            if self.training and self.config.class_dropout_prob > 0:
                # classifier-free guidance training: replace the class by the null class
                dropped = torch.rand(classes.shape, device=classes.device) < self.config.class_dropout_prob
                classes = torch.where(dropped, self.config.num_classes, classes)
            embeddings = torch.where(
                is_class[..., None],
                self.class_embedding(classes),
                self.token_embedding(input_ids.masked_fill(is_class, 0)),
            )
        embeddings = embeddings + self.position_embedding[position_ids].to(embeddings.dtype)
        return self.dropout(embeddings)


class LARPARAttention(nn.Module):
    """Causal multi-head attention (grouped-query when `num_key_value_heads < num_attention_heads`), no RoPE."""

    def __init__(self, config: LARPARConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        kv_width = config.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kv_width, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv_width, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, cache: Cache | None = None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention_interface(
            self, query, key, value, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling, **kwargs,
        )
        return self.o_proj(output.reshape(*input_shape, -1).contiguous()), weights


class LARPARDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: LARPARConfig, layer_idx: int):
        super().__init__()
        self.attention_norm = LARPARRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = LARPARAttention(config, layer_idx)
        self.ffn_norm = LARPARRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LARPARMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, cache: Cache | None = None, **kwargs):
        attended, _ = self.self_attn(self.attention_norm(hidden_states), attention_mask, cache, **kwargs)
        hidden_states = hidden_states + self.dropout(attended)
        return hidden_states + self.dropout(self.mlp(self.ffn_norm(hidden_states)))


class LARPARPreTrainedModel(PreTrainedModel):
    config: LARPARConfig
    base_model_prefix = "model"
    input_modalities = ("text",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["LARPAREmbeddings", "LARPARDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, LARPARRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
        elif isinstance(module, LARPAREmbeddings):
            if self.config.use_fixed_pe:
                init.copy_(module.position_embedding, module.compute_fixed_positions())
            else:
                init.normal_(module.position_embedding, std=std)
        else:
            init_common_weights(module, std)


class LARPARModel(LARPARPreTrainedModel):
    """The decoder stack: `input_ids` [B, L] -> final hidden states [B, L, hidden_size]."""

    def __init__(self, config: LARPARConfig):
        super().__init__(config)
        self.embeddings = LARPAREmbeddings(config)
        self.layers = nn.ModuleList(LARPARDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LARPARRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None, **kwargs):
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = (torch.arange(input_ids.shape[1], device=input_ids.device) + past)[None]
        limit = self.embeddings.position_embedding.shape[0]
        if int(position_ids.max()) >= limit:
            raise ValueError(
                f"LARP sequences hold at most {limit} tokens ({self.config.condition_length} condition + "
                f"{limit - self.config.condition_length} codes), got position {int(position_ids.max())}."
            )
        hidden_states = self.embeddings(input_ids, position_ids)
        mask = create_causal_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask, cache=cache,
            position_ids=position_ids,
        )
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=mask, cache=cache, **kwargs)
        return self.norm(hidden_states), cache


class LARPARForCausalLM(LARPARPreTrainedModel, GenerationMixin):
    r"""
    LARP generator with its output head: `logits[:, i]` predicts the code after position i, over the `vocab_size`
    codes. A sequence holds at most `num_condition_tokens + max_position_embeddings - 1` tokens (its position table;
    the last code is predicted, never fed). Sequences are `[condition ; codes]` (see `LARPARConfig` for the ids); `build_prompt` makes the condition.

    Example (class-conditional, then decoded by the tokenizer):
    ```python
    >>> prompt = generator.build_prompt(class_labels=torch.tensor([3, 7]))
    >>> sequences = generator.generate(prompt, max_new_tokens=1024, do_sample=True, top_k=0, cfg_scale=1.25)
    >>> video = tokenizer.decode(sequences[:, prompt.shape[1]:]).reconstruction    # [2, 16, 3, 128, 128]
    ```
    """

    _tied_weights_keys = {}

    def __init__(self, config: LARPARConfig):
        super().__init__(config)
        self.model = LARPARModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embeddings.token_embedding

    def build_prompt(self, class_labels: torch.Tensor | None = None, condition_tokens: torch.Tensor | None = None):
        """Class-conditional: `class_labels` [B] (use `num_classes` for the null class) -> `input_ids` [B, 1].
        Frame prediction: `condition_tokens` [B, num_condition_tokens - 1] (LARP codes of the conditioning frames)
        -> `input_ids` [B, num_condition_tokens] ending with the separator."""
        config = self.config
        if config.frame_prediction:
            expected = config.num_condition_tokens - 1
            if condition_tokens is None or condition_tokens.ndim != 2 or condition_tokens.shape[1] != expected:
                got = None if condition_tokens is None else tuple(condition_tokens.shape)
                raise ValueError(f"frame prediction needs condition_tokens of shape [batch, {expected}], got {got}.")
            separator = torch.full_like(condition_tokens[:, :1], config.vocab_size)
            return torch.cat([condition_tokens, separator], dim=1).to(self.device)
        if class_labels is None or class_labels.ndim != 1:
            raise ValueError("a class-conditional model needs class_labels of shape [batch].")
        num_classes = config.input_vocab_size - config.vocab_size
        if int(class_labels.min()) < 0 or int(class_labels.max()) >= num_classes:
            raise ValueError(f"class labels must be in [0, {num_classes}), got {class_labels.tolist()}.")
        return (class_labels[:, None] + config.vocab_size).to(self.device)

    def _validate_input_ids(self, input_ids: torch.Tensor) -> None:
        limit = self.config.input_vocab_size
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= limit):
            raise ValueError(
                f"input_ids must be in [0, {limit}) (codes, then class ids or the separator), got values in "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]."
            )

    def _with_null_class(self, input_ids, attention_mask, position_ids, cache):
        """Stacks the null-class copy of every sequence under the batch (first call) or repeats the new tokens."""
        if self.config.frame_prediction:
            raise ValueError("classifier-free guidance needs a class-conditional model (the original has none for "
                             "frame prediction).")
        if cache is None or cache.get_seq_length() == 0:
            null = self.config.vocab_size + self.config.num_classes
            unconditional = torch.where(input_ids >= self.config.vocab_size, null, input_ids)
        else:
            unconditional = input_ids
        double = lambda x: None if x is None else torch.cat([x, x])  # noqa: E731
        return torch.cat([input_ids, unconditional]), double(attention_mask), double(position_ids)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        cfg_scale: float | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): `[condition ; codes]` or, with a
            cache, the new codes.
        labels (`torch.LongTensor` of shape `(batch_size, num_codes)`, *optional*): the codes to predict, aligned
            as in the original: `logits[:, condition_length - 1 + i]` predicts `labels[:, i]` (so training feeds
            `[condition ; codes[:, :-1]]` with `labels=codes`; the last code is never an input). -100 is ignored.
        cfg_scale (`float`, *optional*): classifier-free guidance (class-conditional models): the logits are
            `uncond + cfg_scale * (cond - uncond)`, the null-class sequences running in the same batch (and cache).
        """
        self._validate_input_ids(input_ids)
        guided = cfg_scale is not None and cfg_scale != 1.0
        if guided:
            input_ids, attention_mask, position_ids = self._with_null_class(input_ids, attention_mask, position_ids, cache)
        hidden_states, cache = self.model(input_ids, attention_mask, position_ids, cache, use_cache, **kwargs)
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)
        if guided:
            conditional, unconditional = logits.float().chunk(2)
            logits = unconditional + cfg_scale * (conditional - unconditional)
        loss = None
        if labels is not None:
            start = self.config.condition_length - 1
            predicted = logits[:, start : start + labels.shape[1]]
            if predicted.shape[1] != labels.shape[1]:
                raise ValueError(f"labels cover {labels.shape[1]} codes but the sequence predicts {predicted.shape[1]}.")
            loss = nn.functional.cross_entropy(predicted.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)


__all__ = ["LARPARForCausalLM", "LARPARModel", "LARPARPreTrainedModel"]
