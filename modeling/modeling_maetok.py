"""MAETok: a 1D continuous image tokenizer trained as a masked autoencoder.

A ViT encoder appends learned latent tokens to the image patches (class token + learned absolute positions, plus
learned mixed 2D RoPE on the patch tokens) and outputs them as continuous latents [B, 128, 32]; a ViT decoder starts
from mask tokens, is conditioned on the latents (as extra tokens and through adaLN modulation of those tokens) and
predicts pixels. Training replaces 40-60 % of the patch tokens by a mask token and lets auxiliary shallow decoders
predict HOG, DINOv2 and SigLIP features of the masked patches; a second stage fine-tunes the decoder alone.
Paper: https://arxiv.org/abs/2502.03444.
"""

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration_maetok import MAETokConfig
from .hog import HOGFeatures
from .layers import LayerScale, VisionEncoderLayer, init_common_weights, unpatchify
from .teachers_maetok import MAETokTeacher
from .tokenizer_utils import (
    TokenizerDecoderOutput,
    TokenizerEncoderOutput,
    TokenizerLayout,
    TokenizerModelOutput,
    VisualTokenizerMixin,
    apply_forward_hook,
)


AUX_TARGETS = ("hog", "dino", "siglip")


@dataclass
class MAETokEncoderOutput(TokenizerEncoderOutput):
    r"""
    latents (`torch.FloatTensor` of shape `(batch_size, num_latent_tokens, latent_dim)`):
        The continuous latent tokens the decoder consumes.
    encoder_output (`torch.FloatTensor` of shape `(batch_size, num_latent_tokens, encoder_hidden_size)`):
        Encoder hidden states of the latent tokens after the final LayerNorm (before the projection to `latent_dim`).
    normalized_latents (`torch.FloatTensor` of shape `(batch_size, num_latent_tokens, latent_dim)`):
        `(latents - config.vq_mean) / config.vq_std`: what diffusion models are trained on.
    mask (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
        Patches replaced by the mask token (training or an explicit `mask`), row-major over the encoder grid.
    """

    normalized_latents: torch.FloatTensor | None = None
    mask: torch.BoolTensor | None = None


@dataclass
class MAETokModelOutput(TokenizerModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
        `reconstruction_loss_weight` x pixel MSE, plus in training the weighted auxiliary feature losses.
    latents (`torch.FloatTensor` of shape `(batch_size, num_latent_tokens, latent_dim)`):
        The continuous latent tokens.
    reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
        Decoded images in [-1, 1] (not clamped).
    reconstruction_loss (`torch.FloatTensor` of shape `()`, *optional*): pixel MSE against `labels`.
    hog_loss (`torch.FloatTensor` of shape `()`, *optional*): HOG prediction MSE (masked patches).
    dino_loss / siglip_loss (`torch.FloatTensor` of shape `()`, *optional*): negative cosine similarity between the
        predicted and the teacher features (masked patches).
    mask (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*): the masked patches.
    """

    reconstruction_loss: torch.FloatTensor | None = None
    hog_loss: torch.FloatTensor | None = None
    dino_loss: torch.FloatTensor | None = None
    siglip_loss: torch.FloatTensor | None = None
    mask: torch.BoolTensor | None = None


def _decoder_spec(config: MAETokConfig, target: str) -> dict:
    """Sizes of the pixel decoder (`target="pixel"`) or of an auxiliary feature decoder."""
    if target == "pixel":
        return {
            "hidden_size": config.decoder_hidden_size,
            "num_layers": config.decoder_num_hidden_layers,
            "num_heads": config.decoder_num_attention_heads,
            "patch_size": config.decoder_patch_size,
            "use_class_token": config.decoder_use_class_token,
            "out_dim": config.decoder_patch_size**2 * config.num_channels,
        }
    out_dim = {"hog": config.hog_feature_dim, "dino": config.dino_feature_dim, "siglip": config.siglip_feature_dim}
    return {
        "hidden_size": config.aux_hidden_size,
        "num_layers": config.aux_num_hidden_layers,
        "num_heads": config.aux_num_attention_heads,
        "patch_size": config.decoder_patch_size if target == "hog" else config.aux_feature_patch_size,
        "use_class_token": config.aux_use_class_token,
        "out_dim": out_dim[target],
    }


def init_mixed_rope_frequencies(
    num_layers: int, num_heads: int, head_dim: int, theta: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Initial learned RoPE frequencies [2 (x, y), num_layers, num_heads * head_dim / 2]: per head, `head_dim / 4`
    log-spaced magnitudes along a random direction and along the perpendicular one."""
    magnitudes = theta ** -(torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim)
    angles = torch.rand(num_layers, num_heads, 1, generator=generator) * 2 * math.pi
    directions = torch.cat([angles, angles + math.pi / 2], dim=-1).repeat_interleave(head_dim // 4, dim=-1)
    magnitudes = magnitudes.repeat(2)
    freqs = torch.stack([magnitudes * torch.cos(directions), magnitudes * torch.sin(directions)], dim=0)
    return freqs.reshape(2, num_layers, num_heads * head_dim // 2)


class MAETokRotaryEmbedding(nn.Module):
    """Learned mixed 2D RoPE: every layer and head rotates pair i of a patch at grid position (x, y) by
    `x * fx[i] + y * fy[i]`, with learned frequencies. Prefix (class) and latent tokens are not rotated."""

    def __init__(self, config: MAETokConfig, hidden_size: int, num_heads: int, num_layers: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.num_layers = num_layers
        self.theta = config.rope_theta
        self.freqs = nn.Parameter(torch.empty(2, num_layers, hidden_size // 2))

    def forward(
        self, grid_height: int, grid_width: int, num_prefix_tokens: int, num_suffix_tokens: int, layer_index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns float32 (cos, sin) of layer `layer_index`, shape [1, num_heads, prefix + grid_h * grid_w + suffix,
        head_dim], for interleaved-pair rotation; identity (cos 1, sin 0) outside the patch tokens. One layer at a
        time: the tables of all layers at once would dominate the memory of a small-batch call."""
        freqs = self.freqs[:, layer_index : layer_index + 1].float()
        positions = torch.arange(grid_height * grid_width, device=freqs.device, dtype=torch.float32)
        pos_x = (positions % grid_width)[None, :, None]
        pos_y = torch.div(positions, grid_width, rounding_mode="floor")[None, :, None]
        angles = pos_x * freqs[0][:, None, :] + pos_y * freqs[1][:, None, :]
        angles = angles.unflatten(-1, (self.num_heads, -1)).transpose(1, 2).repeat_interleave(2, dim=-1)
        cos, sin = angles.cos(), angles.sin()
        pad = (0, 0, num_prefix_tokens, num_suffix_tokens)
        cos = F.pad(cos, pad, value=1.0)
        sin = F.pad(sin, pad, value=0.0)
        return cos[0, None], sin[0, None]


class MAETokEncoderEmbeddings(nn.Module):
    """Patch embedding, class token, absolute position table, the training mask token and the latent tokens."""

    def __init__(self, config: MAETokConfig):
        super().__init__()
        width = config.encoder_hidden_size
        self.grid_size = config.image_size // config.patch_size
        self.patch_embedding = nn.Conv2d(config.num_channels, width, config.patch_size, stride=config.patch_size)
        self.class_embedding = nn.Parameter(torch.empty(1, 1, width))
        self.position_embedding = nn.Parameter(torch.empty(1, 1 + self.grid_size**2, width))
        self.mask_token = nn.Parameter(torch.empty(1, 1, width)) if config.mask_ratio_max > 0 else None
        self.latent_tokens = nn.Parameter(torch.empty(1, config.num_latent_tokens, width))
        self.latent_position_embedding = nn.Parameter(torch.empty(1, config.num_latent_tokens, width))

    def forward(self, pixel_values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """pixel_values [B, C, H, W], mask [B, grid**2] (True = replace by the mask token)
        -> [B, 1 + grid**2 + N, width]."""
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.to(dtype)).flatten(2).transpose(1, 2)
        if mask is not None:
            # masked patches still get their absolute position below, as in the original
            patches = torch.where(mask[..., None], self.mask_token.to(dtype), patches)
        batch_size = patches.shape[0]
        cls = self.class_embedding.to(dtype).expand(batch_size, -1, -1)
        # the released encoder adds this table on top of RoPE although its config says `use_ape: False`
        image_tokens = torch.cat([cls, patches], dim=1) + self.position_embedding.to(dtype)
        latents = (self.latent_tokens + self.latent_position_embedding).to(dtype).expand(batch_size, -1, -1)
        return torch.cat([image_tokens, latents], dim=1)


class MAETokEncoderLayer(VisionEncoderLayer):
    """Pre-norm ViT block with LayerScale; RoPE angles are given per call."""

    def __init__(self, config: MAETokConfig):
        width = config.encoder_hidden_size
        super().__init__(
            config,
            width,
            config.encoder_num_attention_heads,
            int(width * config.mlp_ratio),
            hidden_act=config.hidden_act,
            layer_norm_eps=config.layer_norm_eps,
            interleaved_rope=True,
            layer_scale_init=config.layer_scale_init,
        )

    def forward(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # cos/sin are positional so gradient checkpointing sees them (the RoPE frequencies are trained)
        return super().forward(hidden_states, None, (cos, sin))


class MAETokEncoder(nn.Module):
    def __init__(self, config: MAETokConfig):
        super().__init__()
        self.config = config
        self.grid_size = config.image_size // config.patch_size
        self.num_latent_tokens = config.num_latent_tokens
        self.embeddings = MAETokEncoderEmbeddings(config)
        self.rotary_emb = MAETokRotaryEmbedding(
            config, config.encoder_hidden_size, config.encoder_num_attention_heads, config.encoder_num_hidden_layers
        )
        self.layers = nn.ModuleList(MAETokEncoderLayer(config) for _ in range(config.encoder_num_hidden_layers))
        self.post_layernorm = nn.LayerNorm(config.encoder_hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C, H, W] -> hidden states of the latent tokens [B, N, encoder_hidden_size]."""
        hidden_states = self.embeddings(pixel_values, mask)
        for index, layer in enumerate(self.layers):
            cos, sin = self.rotary_emb(self.grid_size, self.grid_size, 1, self.num_latent_tokens, index)
            hidden_states = layer(hidden_states, cos, sin)
        hidden_states = self.post_layernorm(hidden_states)
        return hidden_states[:, -self.num_latent_tokens :]


class MAETokModulation(nn.Module):
    """adaLN conditioning: `proj(silu(latents))` split into `num_chunks` shift/scale tensors [B, N, width]."""

    def __init__(self, latent_dim: int, hidden_size: int, num_chunks: int):
        super().__init__()
        self.num_chunks = num_chunks
        self.proj = nn.Linear(latent_dim, num_chunks * hidden_size)

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.proj(F.silu(latents.to(self.proj.weight.dtype))).chunk(self.num_chunks, dim=-1)


def _modulate_suffix(hidden_states: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`x * scale + shift` (no `1 +`) on the last `shift.shape[1]` tokens only."""
    num_latent = shift.shape[1]
    head, tail = hidden_states[:, :-num_latent], hidden_states[:, -num_latent:]
    return torch.cat([head, tail * scale + shift], dim=1)


class MAETokDecoderEmbeddings(nn.Module):
    """Builds [class token?, grid**2 mask tokens, projected latents + latent positions] (no absolute positions)."""

    def __init__(self, config: MAETokConfig, hidden_size: int, grid_size: int, use_class_token: bool):
        super().__init__()
        self.grid_size = grid_size
        self.token_projection = nn.Linear(config.latent_dim, hidden_size)
        self.class_embedding = nn.Parameter(torch.empty(1, 1, hidden_size)) if use_class_token else None
        self.mask_token = nn.Parameter(torch.empty(1, 1, hidden_size))
        self.latent_position_embedding = nn.Parameter(torch.empty(1, config.num_latent_tokens, hidden_size))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, N, latent_dim] -> [B, (1) + grid**2 + N, hidden_size]."""
        dtype = self.token_projection.weight.dtype
        batch_size = latents.shape[0]
        sequence = []
        if self.class_embedding is not None:
            sequence.append(self.class_embedding.to(dtype).expand(batch_size, -1, -1))
        sequence.append(self.mask_token.to(dtype).expand(batch_size, self.grid_size**2, -1))
        sequence.append(self.token_projection(latents.to(dtype)) + self.latent_position_embedding.to(dtype))
        return torch.cat(sequence, dim=1)


class MAETokDecoderLayer(VisionEncoderLayer):
    """MoVQ-style block: non-affine pre-norms whose latent-token rows are modulated by the raw latents."""

    def __init__(self, config: MAETokConfig, hidden_size: int, num_heads: int):
        super().__init__(
            config,
            hidden_size,
            num_heads,
            int(hidden_size * config.mlp_ratio),
            hidden_act=config.hidden_act,
            layer_norm_eps=config.layer_norm_eps,
            norm_affine=False,
            interleaved_rope=True,
        )
        self.modulation = MAETokModulation(config.latent_dim, hidden_size, 4)

    def forward(
        self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, latents: torch.Tensor
    ) -> torch.Tensor:
        shift_attn, scale_attn, shift_mlp, scale_mlp = self.modulation(latents)
        normed = _modulate_suffix(self.norm1(hidden_states), shift_attn, scale_attn)
        attn_output, _ = self.self_attn(normed, None, (cos, sin))
        hidden_states = hidden_states + attn_output
        normed = _modulate_suffix(self.norm2(hidden_states), shift_mlp, scale_mlp)
        return hidden_states + self.mlp(normed)


class MAETokModulatedNorm(nn.Module):
    """Final non-affine LayerNorm with the latent-token rows modulated by the raw latents."""

    def __init__(self, config: MAETokConfig, hidden_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps, elementwise_affine=False, bias=False)
        self.modulation = MAETokModulation(config.latent_dim, hidden_size, 2)

    def forward(self, hidden_states: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(latents)
        return _modulate_suffix(self.norm(hidden_states), shift, scale)


class MAETokHead(nn.Module):
    """Linear head on the patch tokens; the pixel head also unpatchifies to an image."""

    def __init__(self, hidden_size: int, out_dim: int, patch_size: int | None = None, num_channels: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.proj = nn.Linear(hidden_size, out_dim)

    def forward(self, hidden_states: torch.Tensor, grid_size: int) -> torch.Tensor:
        """[B, grid**2, hidden] -> pixels [B, C, grid * p, grid * p], or features [B, grid**2, out_dim]."""
        output = self.proj(hidden_states)
        if self.patch_size is None:
            return output
        # per patch the channels are laid out (row, column, colour)
        return unpatchify(output, self.patch_size, grid_size, grid_size)


class MAETokDecoder(nn.Module):
    """ViT decoder from latents to pixels (`target="pixel"`) or to per-patch HOG / DINOv2 / SigLIP features."""

    def __init__(self, config: MAETokConfig, target: str = "pixel"):
        super().__init__()
        spec = _decoder_spec(config, target)
        self.target = target
        self.grid_size = config.image_size // spec["patch_size"]
        self.num_prefix_tokens = int(spec["use_class_token"])
        self.embeddings = MAETokDecoderEmbeddings(config, spec["hidden_size"], self.grid_size, spec["use_class_token"])
        self.rotary_emb = MAETokRotaryEmbedding(config, spec["hidden_size"], spec["num_heads"], spec["num_layers"])
        self.layers = nn.ModuleList(
            MAETokDecoderLayer(config, spec["hidden_size"], spec["num_heads"]) for _ in range(spec["num_layers"])
        )
        self.final_norm = MAETokModulatedNorm(config, spec["hidden_size"])
        pixel_patch = spec["patch_size"] if target == "pixel" else None
        self.head = MAETokHead(spec["hidden_size"], spec["out_dim"], pixel_patch, config.num_channels)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, N, latent_dim] -> pixels [B, C, H, W] or features [B, grid**2, out_dim]."""
        hidden_states = self.embeddings(latents)
        for index, layer in enumerate(self.layers):
            cos, sin = self.rotary_emb(self.grid_size, self.grid_size, self.num_prefix_tokens, latents.shape[1], index)
            hidden_states = layer(hidden_states, cos, sin, latents)
        # the modulation reads the raw latents, not their projection to the decoder width
        hidden_states = self.final_norm(hidden_states, latents)
        start = self.num_prefix_tokens
        return self.head(hidden_states[:, start : start + self.grid_size**2], self.grid_size)


class MAETokPreTrainedModel(PreTrainedModel):
    config: MAETokConfig
    base_model_prefix = "maetok"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "MAETokEncoderEmbeddings",
        "MAETokDecoderEmbeddings",
        "MAETokEncoderLayer",
        "MAETokDecoderLayer",
    ]
    # the RoPE angles reach ~grid_size * |freq|; low-precision frequencies would visibly shift them
    _keep_in_fp32_modules_strict = ["rotary_emb"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if init_common_weights(module, std):
            return
        if isinstance(module, LayerScale):
            init.constant_(module.lambda1, self.config.layer_scale_init)
        elif isinstance(module, MAETokModulation):
            # adaLN-zero: the decoders start unconditioned, as in the original training
            init.zeros_(module.proj.weight)
            init.zeros_(module.proj.bias)
        elif isinstance(module, MAETokRotaryEmbedding):
            freqs = init_mixed_rope_frequencies(module.num_layers, module.num_heads, module.head_dim, module.theta)
            init.copy_(module.freqs, freqs)
        elif isinstance(module, MAETokEncoderEmbeddings):
            init.normal_(module.class_embedding, std=1e-6)
            init.trunc_normal_(module.position_embedding, std=std)
            init.normal_(module.latent_tokens, std=std)
            init.trunc_normal_(module.latent_position_embedding, std=std)
            if module.mask_token is not None:
                init.normal_(module.mask_token, std=std)
        elif isinstance(module, MAETokDecoderEmbeddings):
            init.normal_(module.mask_token, std=std)
            init.trunc_normal_(module.latent_position_embedding, std=std)
            if module.class_embedding is not None:
                init.normal_(module.class_embedding, std=1e-6)


class MAETokModel(VisualTokenizerMixin, MAETokPreTrainedModel):
    r"""
    MAETok tokenizer. `encode` maps images in **[-1, 1]** ([B, 3, H, W]) to continuous latents
    [B, num_latent_tokens, latent_dim] (`tokens` is None); `decode` maps latents back to images in [-1, 1] (not
    clamped). `normalize_latents` / `denormalize_latents` apply the `vq_mean` / `vq_std` statistics diffusion models
    are trained with.

    Training (`model.train()`): a random 40-60 % of the patch tokens is replaced by the mask token, and
    `forward(pixel_values, labels=pixel_values)` returns the pixel MSE plus, when auxiliary decoders are configured,
    the HOG MSE (targets computed in the package) and the DINOv2 / SigLIP negative cosine losses on the masked patches
    (targets passed as `dino_targets` / `siglip_targets` or computed by teachers given to `set_feature_teachers`).
    `freeze_encoder()` switches to the decoder fine-tuning stage.

    Example:
    ```python
    >>> model = MAETokModel(MAETokConfig.from_variant("maetok-b-128")).eval()   # train mode would mask patches
    >>> enc = model.encode(torch.rand(1, 3, 256, 256) * 2 - 1)   # enc.latents: [1, 128, 32], enc.tokens: None
    >>> model.decode(enc.latents).reconstruction.shape          # [1, 3, 256, 256]
    ```
    """

    def __init__(self, config: MAETokConfig):
        super().__init__(config)
        self.encoder = MAETokEncoder(config)
        self.quant_proj = nn.Linear(config.encoder_hidden_size, config.latent_dim)
        self.decoder = MAETokDecoder(config, "pixel")
        self.hog_decoder = MAETokDecoder(config, "hog") if config.use_hog_decoder else None
        self.dino_decoder = MAETokDecoder(config, "dino") if config.use_dino_decoder else None
        self.siglip_decoder = MAETokDecoder(config, "siglip") if config.use_siglip_decoder else None
        self.hog = (
            HOGFeatures(config.hog_num_bins, config.hog_cell_size, config.hog_gaussian_window)
            if config.use_hog_decoder
            else None
        )
        # teachers are user-supplied frozen models: kept out of the module tree, the state dict and `.to()`
        self._feature_teachers = {}
        self.post_init()
        if config.train_decoder_only:
            self._set_encoder_trainable(False)

    # ----- latent normalisation for diffusion models -----

    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """`(latents - vq_mean) / vq_std`: the zero-mean, unit-variance latents generators are trained on."""
        return (latents - self.config.vq_mean) / self.config.vq_std

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize_latents`: `latents * vq_std + vq_mean`, ready for `decode`."""
        return latents * self.config.vq_std + self.config.vq_mean

    # ----- encoding / decoding -----

    @property
    def num_patches(self) -> int:
        return (self.config.image_size // self.config.patch_size) ** 2

    @property
    def layout(self) -> TokenizerLayout:
        config = self.config
        return TokenizerLayout(
            inputs=("image",),
            tokens="1d",
            num_channels=config.num_channels,
            image_size=(config.image_size, config.image_size),
            num_tokens=config.num_latent_tokens,
            latent_dim=config.latent_dim,
        )

    def random_patch_mask(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.BoolTensor:
        """Training mask [B, num_patches]: one ratio per batch from a normal truncated to [mask_ratio_min,
        mask_ratio_max] and peaked at the maximum, `ceil(ratio * num_patches)` random patches per image."""
        low, high, std = self.config.mask_ratio_min, self.config.mask_ratio_max, self.config.mask_ratio_std
        if high <= low or std <= 0:
            ratio = high
        else:
            lower_cdf = torch.special.ndtr(torch.tensor((low - high) / std, dtype=torch.float64, device="cpu"))
            uniform = torch.rand((), generator=generator, dtype=torch.float64, device="cpu")
            # inverse-CDF sample of N(high, std) restricted to [low, high]
            ratio = float(high + std * torch.special.ndtri(lower_cdf + uniform * (0.5 - lower_cdf)))
        num_masked = min(math.ceil(self.num_patches * ratio), self.num_patches)
        scores = torch.rand(batch_size, self.num_patches, generator=generator, device="cpu")
        masked = scores.argsort(dim=1)[:, :num_masked]
        mask = torch.zeros(batch_size, self.num_patches, dtype=torch.bool, device="cpu")
        return mask.scatter_(1, masked, True).to(device)

    def _validate_mask(self, mask: torch.Tensor, batch_size: int) -> torch.Tensor:
        if self.encoder.embeddings.mask_token is None:
            raise ValueError("this MAETok model has no mask token (mask_ratio_max=0); it cannot encode with a mask.")
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (batch_size, self.num_patches):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a tensor of shape [{batch_size}, {self.num_patches}], got {shape}.")
        return mask.bool()

    def _encode(self, pixel_values: torch.Tensor, mask: torch.Tensor | None = None) -> MAETokEncoderOutput:
        decoder_only = self.training and self.config.train_decoder_only
        if mask is not None:
            mask = self._validate_mask(mask, pixel_values.shape[0])
        elif self.training and not decoder_only and self.encoder.embeddings.mask_token is not None:
            mask = self.random_patch_mask(pixel_values.shape[0], pixel_values.device)
        with torch.no_grad() if decoder_only else nullcontext():
            encoder_output = self.encoder(pixel_values, mask)
            latents = self.quant_proj(encoder_output)
        return MAETokEncoderOutput(
            latents=latents,
            encoder_output=encoder_output,
            normalized_latents=self.normalize_latents(latents),
            mask=mask,
        )

    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True, **kwargs) -> MAETokEncoderOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, image_size, image_size)`): images in [-1, 1].
            mask (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*): patches to replace by the
                mask token. Default: a random mask in training mode (unless `train_decoder_only`), none in eval mode.

        Returns: `MAETokEncoderOutput` with `latents` [B, N, latent_dim], `normalized_latents`, `encoder_output`
        [B, N, encoder_hidden_size] and `mask`; `tokens` is None.
        """
        return super().encode(pixel_values, return_dict=return_dict, **kwargs)

    def _decode(self, latents: torch.Tensor, denormalize: bool = False) -> TokenizerDecoderOutput:
        if denormalize:
            latents = self.denormalize_latents(latents)
        return TokenizerDecoderOutput(reconstruction=self.decoder(latents))

    def decode(self, tokens_or_latents: torch.Tensor, return_dict: bool = True, **kwargs) -> TokenizerDecoderOutput:
        r"""
        Args:
            tokens_or_latents (`torch.FloatTensor` of shape `(batch_size, num_latent_tokens, latent_dim)`): latents
                from `encode` (MAETok is continuous: integer token ids are rejected).
            denormalize (`bool`, *optional*, defaults to `False`): the latents are normalised (e.g. diffusion samples);
                apply `denormalize_latents` first.

        Returns: `TokenizerDecoderOutput` with `reconstruction` [B, 3, H, W] in [-1, 1] (not clamped).
        """
        return super().decode(tokens_or_latents, return_dict=return_dict, **kwargs)

    @apply_forward_hook
    def decode_features(self, latents: torch.Tensor, target: str) -> torch.Tensor:
        """Auxiliary decoder prediction: `target` in ("hog", "dino", "siglip"); latents [B, N, latent_dim] ->
        [B, grid**2, feature_dim] on that decoder's patch grid."""
        if target not in AUX_TARGETS:
            raise ValueError(f"target must be one of {AUX_TARGETS}, got {target!r}.")
        decoder = self.aux_decoders[target]
        if decoder is None:
            raise ValueError(f"this MAETok model has no {target} decoder (config.use_{target}_decoder=False).")
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            raise ValueError("decode_features expects float latents [batch, num_latent_tokens, latent_dim].")
        self.validate_latents(latents)
        return decoder(latents)

    # ----- training -----

    @property
    def aux_decoders(self) -> dict:
        """Auxiliary decoders by target (`None` where the config has none)."""
        return {"hog": self.hog_decoder, "dino": self.dino_decoder, "siglip": self.siglip_decoder}

    def _set_encoder_trainable(self, trainable: bool) -> None:
        for module in (self.encoder, self.quant_proj):
            for param in module.parameters():
                param.requires_grad_(trainable)

    def train(self, mode: bool = True):
        # loading re-creates the parameters, so the decoder-only stage is re-applied on every mode switch
        # (`from_pretrained` ends with `eval()`, Trainer calls `train()`)
        super().train(mode)
        if self.config.train_decoder_only:
            self._set_encoder_trainable(False)
        return self

    def freeze_encoder(self) -> None:
        """Decoder fine-tuning stage: freezes the encoder and the latent projection and sets
        `config.train_decoder_only` (no masking and no auxiliary losses in training; saved with the config)."""
        self.config.train_decoder_only = True
        self._set_encoder_trainable(False)

    def unfreeze_encoder(self) -> None:
        """Back to the mask-modelling stage (`config.train_decoder_only=False`, encoder trainable)."""
        self.config.train_decoder_only = False
        self._set_encoder_trainable(True)

    def set_feature_teachers(self, dino_model=None, siglip_model=None) -> None:
        """Frozen models that produce the DINOv2 / SigLIP targets when `dino_targets` / `siglip_targets` are not
        given to `forward` (e.g. `Dinov2Model`, `SiglipVisionModel`). They are called as
        `teacher(pixel_values=images)` on the input mapped from [-1, 1] to [0, 1], resized to
        `grid * teacher.config.patch_size` and normalised with `config.teacher_image_mean/std`; the last `grid**2`
        tokens of `last_hidden_state` are the targets. They are not saved with the model."""
        for name, model in (("dino", dino_model), ("siglip", siglip_model)):
            if model is not None:
                self._feature_teachers[name] = MAETokTeacher(
                    model, self.config.teacher_image_mean, self.config.teacher_image_std, name
                )

    def _teacher_features(self, target: str, pixel_values: torch.Tensor, grid_size: int) -> torch.Tensor:
        teacher = self._feature_teachers.get(target)
        if teacher is None:
            feature_dim = {"dino": self.config.dino_feature_dim, "siglip": self.config.siglip_feature_dim}[target]
            raise ValueError(
                f"the {target} decoder needs targets in training: pass `{target}_targets` [batch, {grid_size**2}, "
                f"{feature_dim}] to forward or call `set_feature_teachers({target}_model=...)`."
            )
        return teacher(pixel_values, grid_size)

    def _masked_mean(self, per_patch: torch.Tensor, mask: torch.Tensor | None, target: str) -> torch.Tensor:
        if mask is None or not self.config.aux_loss_on_masked_only:
            return per_patch.mean()
        if mask.shape != per_patch.shape:
            raise ValueError(
                f"aux_loss_on_masked_only needs the {target} decoder grid ({per_patch.shape[1]} patches) to match the "
                f"encoder mask ({mask.shape[1]} patches); set aux_loss_on_masked_only=False."
            )
        weights = mask.to(per_patch.dtype)
        return (per_patch * weights).sum() / weights.sum().clamp(min=1.0)

    def _check_targets(self, name: str, targets: torch.Tensor, expected: tuple[int, ...]) -> torch.Tensor:
        if not isinstance(targets, torch.Tensor) or tuple(targets.shape) != expected:
            shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
            raise ValueError(f"{name} must have shape {list(expected)}, got {shape}.")
        return targets

    def auxiliary_losses(
        self,
        latents: torch.Tensor,
        pixel_values: torch.Tensor,
        mask: torch.Tensor | None = None,
        hog_targets: torch.Tensor | None = None,
        dino_targets: torch.Tensor | None = None,
        siglip_targets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses of the configured auxiliary decoders: HOG MSE and DINOv2 / SigLIP negative cosine similarity,
        averaged over the masked patches (`aux_loss_on_masked_only`) or over all patches."""
        losses = {}
        batch_size = latents.shape[0]
        for target, given in (("hog", hog_targets), ("dino", dino_targets), ("siglip", siglip_targets)):
            decoder = self.aux_decoders[target]
            if decoder is None:
                continue
            prediction = decoder(latents).float()
            expected = (batch_size, decoder.grid_size**2, prediction.shape[-1])
            if given is not None:
                targets = self._check_targets(f"{target}_targets", given, expected)
            elif target == "hog":
                patch = self.config.decoder_patch_size
                got = self.hog.feature_dim(pixel_values.shape[1], patch) if patch % self.hog.cell_size == 0 else None
                if got != expected[-1]:
                    raise ValueError(
                        f"the HOG decoder predicts {expected[-1]} values per {patch}-px patch but in-package HOG with "
                        f"{self.hog.num_bins} bins and {self.hog.cell_size}-px cells gives {got}; adjust hog_cell_size "
                        "or pass `hog_targets`."
                    )
                targets = self.hog(pixel_values, patch)
            else:
                targets = self._teacher_features(target, pixel_values, decoder.grid_size)
                self._check_targets(f"{target} teacher features", targets, expected)
            targets = targets.float()
            if target == "hog":
                per_patch = (prediction - targets).pow(2).mean(dim=-1)
            else:
                per_patch = -(F.normalize(prediction, dim=-1) * F.normalize(targets, dim=-1)).sum(dim=-1)
            losses[target] = self._masked_mean(per_patch, mask, target)
        return losses

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        hog_targets: torch.Tensor | None = None,
        dino_targets: torch.Tensor | None = None,
        siglip_targets: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> MAETokModelOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, image_size, image_size)`): images in [-1, 1].
            labels (`torch.FloatTensor` of the same shape, *optional*): target images (usually `pixel_values`);
                enables the losses.
            mask (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*): explicit patch mask.
            hog_targets (`torch.FloatTensor` of shape `(batch_size, num_patches, hog_feature_dim)`, *optional*):
                HOG targets; computed from `pixel_values` when omitted.
            dino_targets / siglip_targets (`torch.FloatTensor` of shape `(batch_size, num_feature_patches,
                feature_dim)`, *optional*): teacher features; computed by the teachers of `set_feature_teachers`
                when omitted.

        Returns: `MAETokModelOutput`. Auxiliary losses are computed in training mode (not in decoder-only
        fine-tuning) when `labels` are given.
        """
        self.validate_pixel_values(pixel_values)
        encoded = self._encode(pixel_values, mask=mask)
        reconstruction = self._decode(encoded.latents).reconstruction
        loss = reconstruction_loss = None
        aux = {}
        if labels is not None:
            reconstruction_loss = self.reconstruction_loss(reconstruction, labels)
            loss = self.config.reconstruction_loss_weight * reconstruction_loss
            if self.training and not self.config.train_decoder_only:
                aux = self.auxiliary_losses(
                    encoded.latents, pixel_values, encoded.mask, hog_targets, dino_targets, siglip_targets
                )
                weights = {
                    "hog": self.config.hog_loss_weight,
                    "dino": self.config.dino_loss_weight,
                    "siglip": self.config.siglip_loss_weight,
                }
                for target, value in aux.items():
                    loss = loss + weights[target] * value
        output = MAETokModelOutput(
            loss=loss,
            latents=encoded.latents,
            reconstruction=reconstruction,
            reconstruction_loss=reconstruction_loss,
            hog_loss=aux.get("hog"),
            dino_loss=aux.get("dino"),
            siglip_loss=aux.get("siglip"),
            mask=encoded.mask,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["MAETokModel", "MAETokPreTrainedModel", "MAETokEncoderOutput", "MAETokModelOutput"]
