"""Transformer building blocks shared by every vistok vision model.

ViT-style attention (dispatched through transformers' attention interface, so ``eager``, ``sdpa``, ``flex_attention``
and flash kernels all work), MLPs, a pre-norm encoder layer, rotary-embedding helpers, sin-cos position tables and
position-embedding resampling. Model files subclass these with their own prefix (``TiTokEncoderLayer``...), so
``_no_split_modules`` and output recording can tell encoder and decoder layers apart.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def init_common_weights(module: nn.Module, std: float) -> bool:
    """Truncated-normal weights and zero biases for linear/conv layers, unit weights and zero biases for norms.

    Returns True when ``module`` was one of those, so a model's ``_init_weights`` only handles its own modules after
    it. Uses ``transformers.initialization``, which leaves weights loaded from a checkpoint untouched."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            init.zeros_(module.bias)
        return True
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        if module.weight is not None:
            init.ones_(module.weight)
        if module.bias is not None:
            init.zeros_(module.bias)
        return True
    return False


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention. ``query/key/value``: [B, heads, L, head_dim]; returns ([B, L, heads, head_dim], weights)."""
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
        else:
            attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotate_pairs(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotates the pairs (2i, 2i+1) of `x` ([..., D], float32) as complex numbers by `rotation` ([..., D/2] complex)."""
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * rotation).flatten(-2)


def apply_rotary_pos_emb(
    query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotates ``query``/``key`` ([B, heads, L, head_dim]) by angles whose cos/sin broadcast to them.

    ``interleaved=True`` rotates the pairs (2i, 2i+1) (complex-number style, as in timm/EVA code), pair i by the angle
    at index 2i (cos/sin hold each pair's angle twice); the default rotates (i, i + head_dim/2) as transformers'
    language models do. Rotation runs in float32.
    """
    dtype = query.dtype
    q, k = query.float(), key.float()
    if interleaved:
        # one complex product per pair: x * cos + rotated(x) * sin to float32 rounding, ~6x cheaper on CPU
        rotation = torch.complex(cos[..., ::2].float(), sin[..., ::2].float())
        return _rotate_pairs(q, rotation).to(dtype), _rotate_pairs(k, rotation).to(dtype)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    return q.to(dtype), k.to(dtype)


class VisionAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections.

    Args:
        config: the model config; only ``_attn_implementation`` (and ``attention_dropout`` if present) is read.
        hidden_size: width of the token stream.
        num_heads: number of attention heads; ``hidden_size`` must be divisible by it.
        qkv_bias: whether q/k/v projections have a bias.
        out_bias: whether the output projection has a bias.
        qk_norm: ``None``, ``"layernorm"`` (parameter-free LayerNorm over head_dim on q and k) or ``"layernorm_affine"``.
        scaling: softmax scale; defaults to ``head_dim ** -0.5``.
        interleaved_rope: rotate interleaved pairs when ``position_embeddings`` are given.
    """

    def __init__(
        self,
        config,
        hidden_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        out_bias: bool = True,
        qk_norm: str | None = None,
        scaling: float | None = None,
        interleaved_rope: bool = False,
    ):
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}).")
        self.config = config
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5 if scaling is None else scaling
        self.is_causal = False
        # for compatibility with the attention interface
        self.num_key_value_groups = 1
        self.attention_dropout = getattr(config, "attention_dropout", 0.0)
        self.interleaved_rope = interleaved_rope
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.out_proj = nn.Linear(hidden_size, hidden_size, bias=out_bias)
        if qk_norm is None:
            self.q_norm = self.k_norm = None
        elif qk_norm in ("layernorm", "layernorm_affine"):
            affine = qk_norm == "layernorm_affine"
            self.q_norm = nn.LayerNorm(self.head_dim, elementwise_affine=affine, bias=affine)
            self.k_norm = nn.LayerNorm(self.head_dim, elementwise_affine=affine, bias=affine)
        else:
            raise ValueError(f"qk_norm must be None, 'layernorm' or 'layernorm_affine', got {qk_norm!r}.")

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        is_causal: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``hidden_states``: [B, L, hidden_size]; ``attention_mask``: bool (True = attend) or additive float,
        broadcastable to [B, heads, L, L]; ``position_embeddings``: (cos, sin) broadcastable to [B, heads, L, head_dim].
        ``is_causal``: token i attends to tokens <= i (instead of a mask; sdpa then runs its causal kernel, other
        implementations get the lower-triangular mask)."""
        if is_causal and attention_mask is not None:
            raise ValueError("pass either attention_mask or is_causal=True, not both.")
        if is_causal and self.config._attn_implementation != "sdpa":
            length = hidden_states.shape[-2]
            attention_mask = torch.ones(length, length, dtype=torch.bool, device=hidden_states.device).tril()
            is_causal = False
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if self.q_norm is not None:
            query = self.q_norm(query)
            key = self.k_norm(key)
        if position_embeddings is not None:
            query, key = apply_rotary_pos_emb(query, key, *position_embeddings, interleaved=self.interleaved_rope)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            is_causal=is_causal,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.out_proj(attn_output), attn_weights


class VisionMLP(nn.Module):
    """``fc2(act(fc1(x)))``; with ``gated=True`` it is ``fc2(act(fc1(x)) * fc3(x))`` (SwiGLU when act is silu)."""

    def __init__(
        self, hidden_size: int, intermediate_size: int, hidden_act: str = "gelu", bias: bool = True, gated: bool = False
    ):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.act = ACT2FN[hidden_act]
        self.fc3 = nn.Linear(hidden_size, intermediate_size, bias=bias) if gated else None
        self.fc2 = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate = self.act(self.fc1(hidden_states))
        if self.fc3 is not None:
            gate = gate * self.fc3(hidden_states)
        return self.fc2(gate)


class LayerScale(nn.Module):
    def __init__(self, hidden_size: int, init_value: float = 1e-5):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((hidden_size,), init_value))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.lambda1


class VisionEncoderLayer(GradientCheckpointingLayer):
    """Pre-norm transformer layer: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``.

    Args:
        config: the model config (attention implementation).
        hidden_size / num_heads / intermediate_size: sizes of this stack.
        hidden_act: MLP activation (a key of ``transformers.activations.ACT2FN``).
        layer_norm_eps: epsilon of both norms.
        norm_affine: whether the norms have weight and bias.
        qkv_bias / out_bias / mlp_bias / gated_mlp / qk_norm / scaling / interleaved_rope: see ``VisionAttention`` and
            ``VisionMLP``.
        layer_scale_init: if not None, adds LayerScale after attention and MLP.
    """

    def __init__(
        self,
        config,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-5,
        norm_affine: bool = True,
        qkv_bias: bool = True,
        out_bias: bool = True,
        mlp_bias: bool = True,
        gated_mlp: bool = False,
        qk_norm: str | None = None,
        scaling: float | None = None,
        interleaved_rope: bool = False,
        layer_scale_init: float | None = None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps, elementwise_affine=norm_affine, bias=norm_affine)
        self.self_attn = VisionAttention(
            config, hidden_size, num_heads, qkv_bias, out_bias, qk_norm, scaling, interleaved_rope
        )
        self.norm2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps, elementwise_affine=norm_affine, bias=norm_affine)
        self.mlp = VisionMLP(hidden_size, intermediate_size, hidden_act, mlp_bias, gated_mlp)
        self.ls1 = LayerScale(hidden_size, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.ls2 = LayerScale(hidden_size, layer_scale_init) if layer_scale_init is not None else nn.Identity()

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states, _ = self.self_attn(self.norm1(hidden_states), attention_mask, position_embeddings, **kwargs)
        hidden_states = residual + self.ls1(hidden_states)
        hidden_states = hidden_states + self.ls2(self.mlp(self.norm2(hidden_states)))
        return hidden_states


def patchify(latents: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)*(W/p), p*p*C]; features ordered (row in patch, column in patch, channel)."""
    batch_size, channels, height, width = latents.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = latents.reshape(batch_size, channels, grid_h, patch_size, grid_w, patch_size)
    return patches.permute(0, 2, 4, 3, 5, 1).reshape(batch_size, grid_h * grid_w, patch_size * patch_size * channels)


def unpatchify(patches: torch.Tensor, patch_size: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Inverse of `patchify`: [B, grid_h*grid_w, p*p*C] -> [B, C, grid_h*p, grid_w*p]."""
    batch_size = patches.shape[0]
    channels = patches.shape[-1] // (patch_size * patch_size)
    latents = patches.reshape(batch_size, grid_h, grid_w, patch_size, patch_size, channels)
    return latents.permute(0, 5, 1, 3, 2, 4).reshape(batch_size, channels, grid_h * patch_size, grid_w * patch_size)


def split_qkv(fused: torch.Tensor, name: str = "qkv") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Splits a fused query/key/value projection (weight [3W, ...] or bias [3W]) into its three parts."""
    if fused.shape[0] % 3:
        raise ValueError(f"{name} has shape {tuple(fused.shape)}; its first dimension must split in 3 (q, k, v).")
    return tuple(part.contiguous() for part in fused.chunk(3, dim=0))


def get_1d_sincos_pos_embed(embed_dim: int, positions: torch.Tensor, max_period: float = 10000.0) -> torch.Tensor:
    """[len(positions), embed_dim] table: first half sin, second half cos (MAE convention)."""
    if embed_dim % 2 != 0:
        raise ValueError(f"embed_dim must be even for a sin-cos table, got {embed_dim}.")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / max_period**omega
    out = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


def get_2d_sincos_pos_embed(embed_dim: int, grid_h: int, grid_w: int, max_period: float = 10000.0) -> torch.Tensor:
    """[grid_h * grid_w, embed_dim] table (row-major), half of the channels for each axis: [emb(y) | emb(x)]."""
    if embed_dim % 4 != 0:
        raise ValueError(f"embed_dim must be divisible by 4 for a 2D sin-cos table, got {embed_dim}.")
    ys, xs = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb_y = get_1d_sincos_pos_embed(embed_dim // 2, ys, max_period)
    emb_x = get_1d_sincos_pos_embed(embed_dim // 2, xs, max_period)
    return torch.cat([emb_y, emb_x], dim=1)


def resample_abs_pos_embed(
    pos_embed: torch.Tensor,
    new_size: tuple[int, int],
    old_size: tuple[int, int] | None = None,
    num_prefix_tokens: int = 0,
    antialias: bool = True,
) -> torch.Tensor:
    """Bicubically resamples a learned [L, D] (or [1, L, D]) grid table to ``new_size``; prefix tokens are kept.

    ``antialias=False`` is plain bicubic interpolation (``a = -0.75``), which differs from the antialiased kernel even
    when upsampling; use it for code ported from ``F.interpolate(mode="bicubic")`` calls without antialiasing."""
    squeeze = pos_embed.ndim == 2
    if squeeze:
        pos_embed = pos_embed[None]
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if old_size is None:
        side = int(math.isqrt(grid.shape[1]))
        old_size = (side, side)
    if tuple(old_size) == tuple(new_size):
        return pos_embed[0] if squeeze else pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_size[0], old_size[1], dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_size, mode="bicubic", align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    out = torch.cat([prefix, grid], dim=1)
    return out[0] if squeeze else out


class VisionRotaryEmbedding2D(nn.Module):
    """Axial 2D rotary embedding for a grid of patches: the first half of each head's rotary channels encodes the row,
    the second half the column (``rotate_half`` convention).

    ``inv_freq`` is a non-persistent buffer: models must recompute it in ``_init_weights`` (``init.copy_(module.inv_freq,
    module.compute_inv_freq())``) because ``from_pretrained`` builds modules on the meta device.

    Args:
        head_dim: channels per attention head (divisible by 4).
        theta: frequency base.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 4 != 0:
            raise ValueError(f"2D rotary embeddings need head_dim divisible by 4, got {head_dim}.")
        self.head_dim = head_dim
        self.theta = theta
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        quarter = self.head_dim // 4
        return 1.0 / (self.theta ** (torch.arange(quarter, dtype=torch.float32) / quarter))

    def forward(self, grid_h: int, grid_w: int, prefix: int = 0, suffix: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) of shape [prefix + grid_h * grid_w + suffix, head_dim]; prefix/suffix tokens (class, register or
        latent tokens) get the identity rotation."""
        device = self.inv_freq.device
        ys, xs = torch.meshgrid(torch.arange(grid_h, device=device), torch.arange(grid_w, device=device), indexing="ij")
        angles_y = ys.reshape(-1, 1).float() * self.inv_freq
        angles_x = xs.reshape(-1, 1).float() * self.inv_freq
        half = torch.cat([angles_y, angles_x], dim=-1)
        angles = torch.cat([half, half], dim=-1)
        angles = F.pad(angles, (0, 0, prefix, suffix))
        return angles.cos(), angles.sin()
