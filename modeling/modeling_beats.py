"""BEATs audio encoder (Chen et al., 2022, arXiv:2212.09058), as used by Ola.

The model consumes the normalised Kaldi log-mel filterbank that `OlaFeatureExtractor` computes (no torchaudio), cuts
it into 16x16 patches (time-major order), adds a convolutional position embedding and runs post-norm (DeepNorm)
transformer layers whose attention carries a relative position bias gated per query.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_ola import BeatsConfig
from .layers import eager_attention_forward, init_common_weights


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bidirectional T5-style buckets: half of the buckets per direction; exact below a quarter of ``num_buckets``,
    log-spaced up to ``max_distance`` beyond. ``relative_position`` = key index - query index."""
    num_buckets = num_buckets // 2
    buckets = (relative_position > 0).long() * num_buckets
    distance = relative_position.abs()
    max_exact = num_buckets // 2
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + log_ratio * (num_buckets - max_exact)).long().clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class BeatsPatchEmbeddings(nn.Module):
    """Filterbank [B, T, F] -> patch tokens [B, (T // p) * (F // p), hidden_size], time-major."""

    def __init__(self, config: BeatsConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.patch_embedding = nn.Conv2d(
            1, config.patch_embedding_size, config.patch_size, stride=config.patch_size, bias=config.conv_bias
        )
        self.layer_norm = nn.LayerNorm(config.patch_embedding_size, eps=config.layer_norm_eps)
        self.projection = (
            nn.Linear(config.patch_embedding_size, config.hidden_size)
            if config.patch_embedding_size != config.hidden_size
            else None
        )

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        embeddings = self.patch_embedding(input_features.unsqueeze(1).to(self.patch_embedding.weight.dtype))
        embeddings = self.layer_norm(embeddings.flatten(2).transpose(1, 2))
        return self.projection(embeddings) if self.projection is not None else embeddings


class BeatsPositionalConvEmbedding(nn.Module):
    """Grouped 1D convolution over time (weight norm folded into ``conv.weight`` at conversion) + GELU."""

    def __init__(self, config: BeatsConfig):
        super().__init__()
        self.conv = nn.Conv1d(
            config.hidden_size,
            config.hidden_size,
            kernel_size=config.conv_pos,
            padding=config.conv_pos // 2,
            groups=config.conv_pos_groups,
        )
        # an even kernel with padding k // 2 produces one frame too many
        self.num_pad_remove = 1 if config.conv_pos % 2 == 0 else 0

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv(hidden_states.transpose(1, 2))
        if self.num_pad_remove:
            hidden_states = hidden_states[:, :, : -self.num_pad_remove]
        return F.gelu(hidden_states).transpose(1, 2)


class BeatsAttention(nn.Module):
    """Self-attention with an additive relative position bias; with ``gru_rel_pos`` the bias of each query row is
    scaled by a gate computed from that (unscaled) query."""

    def __init__(self, config: BeatsConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        if self.head_dim * self.num_heads != config.hidden_size:
            raise ValueError(
                f"hidden_size ({config.hidden_size}) must be divisible by num_attention_heads ({self.num_heads})."
            )
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        # for compatibility with the attention interface
        self.num_key_value_groups = 1
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        if config.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))

    def forward(self, hidden_states: torch.Tensor, position_bias: torch.Tensor, **kwargs) -> torch.Tensor:
        """``hidden_states``: [B, L, hidden]; ``position_bias``: [heads, L, L]."""
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        bias = position_bias.unsqueeze(0).to(query.dtype)
        if self.config.gru_rel_pos:
            gates = self.grep_linear(query).unflatten(-1, (2, 4)).sum(-1).sigmoid()
            gate_a, gate_b = gates.chunk(2, dim=-1)
            bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
        else:
            bias = bias.expand(query.shape[0], -1, -1, -1)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, _ = attention_interface(
            self,
            query,
            key,
            value,
            bias.contiguous(),
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
            **kwargs,
        )
        return self.out_proj(attn_output.reshape(*input_shape, -1))


class BeatsFeedForward(nn.Module):
    def __init__(self, config: BeatsConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class BeatsEncoderLayer(GradientCheckpointingLayer):
    """Post-norm layer ``LN(alpha * x + f(x))`` with DeepNorm's ``alpha``, or pre-norm with ``layer_norm_first``."""

    def __init__(self, config: BeatsConfig):
        super().__init__()
        self.layer_norm_first = config.layer_norm_first
        self.deep_norm_alpha = (2 * config.num_hidden_layers) ** 0.25 if config.deep_norm else 1.0
        self.self_attn = BeatsAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = BeatsFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, position_bias: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.layer_norm_first:
            hidden_states = hidden_states + self.self_attn(self.self_attn_layer_norm(hidden_states), position_bias)
            return hidden_states + self.feed_forward(self.final_layer_norm(hidden_states))
        residual = hidden_states * self.deep_norm_alpha
        hidden_states = self.self_attn_layer_norm(residual + self.self_attn(hidden_states, position_bias, **kwargs))
        residual = hidden_states * self.deep_norm_alpha
        return self.final_layer_norm(residual + self.feed_forward(hidden_states))


class BeatsPositionBias(nn.Module):
    """The relative position bias table shared by every layer: [heads, L, L] for a sequence of length L."""

    def __init__(self, config: BeatsConfig):
        super().__init__()
        self.num_buckets = config.num_buckets
        self.max_distance = config.max_distance
        self.relative_attention_bias = nn.Embedding(config.num_buckets, config.num_attention_heads)

    def forward(self, length: int) -> torch.Tensor:
        positions = torch.arange(length, device=self.relative_attention_bias.weight.device)
        buckets = relative_position_bucket(positions[None, :] - positions[:, None], self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)


class BeatsPreTrainedModel(PreTrainedModel):
    config: BeatsConfig
    base_model_prefix = "beats"
    main_input_name = "input_features"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["BeatsEncoderLayer", "BeatsPatchEmbeddings"]
    _supports_sdpa = True
    _supports_flex_attn = False
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if init_common_weights(module, self.config.initializer_range):
            return
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=self.config.initializer_range)
        elif isinstance(module, BeatsAttention) and module.config.gru_rel_pos:
            init.ones_(module.grep_a)


class BeatsModel(BeatsPreTrainedModel):
    """BEATs encoder: filterbank [B, T, num_mel_bins] -> features [B, (T // 16) * (num_mel_bins // 16), hidden]."""

    def __init__(self, config: BeatsConfig):
        super().__init__(config)
        self.embeddings = BeatsPatchEmbeddings(config)
        self.pos_conv_embed = BeatsPositionalConvEmbedding(config)
        self.position_bias = BeatsPositionBias(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList([BeatsEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, input_features: torch.Tensor, **kwargs) -> BaseModelOutput:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch_size, num_frames, num_mel_bins)`):
            normalised Kaldi filterbank (`OlaFeatureExtractor`); frames beyond a multiple of the patch size are
            dropped.
        """
        if input_features.ndim != 3 or input_features.shape[-1] != self.config.num_mel_bins:
            raise ValueError(
                f"input_features must be [batch, frames, {self.config.num_mel_bins}], got {tuple(input_features.shape)}."
            )
        if input_features.shape[1] < self.config.patch_size:
            raise ValueError(
                f"need at least {self.config.patch_size} filterbank frames, got {input_features.shape[1]}."
            )
        hidden_states = self.embeddings(input_features)
        hidden_states = hidden_states + self.pos_conv_embed(hidden_states)
        if not self.config.layer_norm_first:
            hidden_states = self.layer_norm(hidden_states)
        position_bias = self.position_bias(hidden_states.shape[1])
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_bias, **kwargs)
        if self.config.layer_norm_first:
            hidden_states = self.layer_norm(hidden_states)
        return BaseModelOutput(last_hidden_state=hidden_states)


__all__ = ["BeatsModel", "BeatsPreTrainedModel"]
