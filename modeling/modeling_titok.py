"""TiTok: a 1D image tokenizer (ViT encoder over patches + latent tokens, VQ or VAE bottleneck, ViT decoder).

Covers the released two-stage VQ models (legacy head predicting MaskGIT-VQGAN proxy codes + the fine-tuned
MaskGIT-VQGAN pixel decoder), the single-stage VQ8k and VAE models and the text-aware TA-TiTok decoders.
Paper: https://arxiv.org/abs/2406.07550, TA-TiTok: https://arxiv.org/abs/2501.07730.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration_titok import TiTokConfig
from .layers import VisionEncoderLayer, init_common_weights, unpatchify
from .quantizers import DiagonalGaussianDistribution, VectorQuantizer
from .tokenizer_utils import (
    TokenizerDecoderOutput,
    TokenizerEncoderOutput,
    TokenizerLayout,
    VisualTokenizerMixin,
    apply_forward_hook,
)


@dataclass
class TiTokDecoderOutput(TokenizerDecoderOutput):
    r"""
    reconstruction (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
        Decoded images in [0, 1] (not clamped).
    proxy_logits (`torch.FloatTensor` of shape `(batch_size, proxy_codebook_size, grid, grid)`, *optional*):
        Legacy (two-stage) models: logits over the MaskGIT-VQGAN codes that the pixel decoder consumes.
    """

    proxy_logits: torch.FloatTensor | None = None


class TiTokEncoderEmbeddings(nn.Module):
    """Patch embedding, class token, position tables and the learned latent tokens of the encoder."""

    def __init__(self, config: TiTokConfig):
        super().__init__()
        width = config.encoder_hidden_size
        self.grid_size = config.image_size // config.patch_size
        self.patch_embedding = nn.Conv2d(config.num_channels, width, config.patch_size, stride=config.patch_size)
        self.class_embedding = nn.Parameter(torch.empty(1, width))
        self.position_embedding = nn.Parameter(torch.empty(self.grid_size**2 + 1, width))
        self.latent_tokens = nn.Parameter(torch.empty(config.num_latent_tokens, width))
        self.latent_position_embedding = nn.Parameter(torch.empty(config.num_latent_tokens, width))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, 1 + grid**2 + N, width]."""
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.to(dtype)).flatten(2).transpose(1, 2)
        batch_size = patches.shape[0]
        cls = self.class_embedding.to(dtype).expand(batch_size, -1, -1)
        image_tokens = torch.cat([cls, patches], dim=1) + self.position_embedding.to(dtype)
        latents = (self.latent_tokens + self.latent_position_embedding).to(dtype).expand(batch_size, -1, -1)
        return torch.cat([image_tokens, latents], dim=1)


class TiTokDecoderEmbeddings(nn.Module):
    """Projects tokens to the decoder width and builds [class, grid**2 mask tokens, latents(, text)] with positions."""

    def __init__(self, config: TiTokConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.grid_size = config.image_size // config.decoder_patch_size
        self.token_projection = nn.Linear(config.token_size, width)
        self.class_embedding = nn.Parameter(torch.empty(1, width))
        self.position_embedding = nn.Parameter(torch.empty(self.grid_size**2 + 1, width))
        self.mask_token = nn.Parameter(torch.empty(1, width))
        self.latent_position_embedding = nn.Parameter(torch.empty(config.num_latent_tokens, width))
        if config.use_text_guidance:
            self.text_projection = nn.Linear(config.text_embed_dim, width)
            self.text_position_embedding = nn.Parameter(torch.empty(config.text_context_length, width))
        else:
            self.text_projection = None

    def forward(self, latents: torch.Tensor, text_guidance: torch.Tensor | None = None) -> torch.Tensor:
        """latents [B, N, token_size] (+ text [B, T, text_embed_dim]) -> [B, 1 + grid**2 + N (+ T), width]."""
        dtype = self.token_projection.weight.dtype
        batch_size, num_tokens, _ = latents.shape
        latents = self.token_projection(latents.to(dtype)) + self.latent_position_embedding[:num_tokens].to(dtype)
        queries = torch.cat([self.class_embedding, self.mask_token.expand(self.grid_size**2, -1)], dim=0)
        queries = (queries + self.position_embedding).to(dtype).expand(batch_size, -1, -1)
        sequence = [queries, latents]
        if self.text_projection is not None:
            text = self.text_projection(text_guidance.to(dtype)) + self.text_position_embedding.to(dtype)
            sequence.append(text)
        return torch.cat(sequence, dim=1)


class TiTokEncoderLayer(VisionEncoderLayer):
    pass


class TiTokDecoderLayer(VisionEncoderLayer):
    pass


def _make_layers(config: TiTokConfig, layer_class, width: int, num_heads: int, num_layers: int) -> nn.ModuleList:
    return nn.ModuleList(
        layer_class(
            config,
            hidden_size=width,
            num_heads=num_heads,
            intermediate_size=int(width * config.mlp_ratio),
            hidden_act=config.hidden_act,
            layer_norm_eps=config.layer_norm_eps,
        )
        for _ in range(num_layers)
    )


class TiTokEncoder(nn.Module):
    def __init__(self, config: TiTokConfig):
        super().__init__()
        self.config = config
        width = config.encoder_hidden_size
        out_dim = config.token_size * (2 if config.quantize_mode == "vae" else 1)
        self.embeddings = TiTokEncoderEmbeddings(config)
        self.pre_layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.layers = _make_layers(
            config,
            TiTokEncoderLayer,
            config.encoder_hidden_size,
            config.encoder_num_attention_heads,
            config.encoder_num_hidden_layers,
        )
        self.post_layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.projection = nn.Linear(width, out_dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> continuous latents [B, N, token_size] (VAE: [B, N, 2 * token_size], mean || logvar)."""
        hidden_states = self.pre_layernorm(self.embeddings(pixel_values))
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        num_tokens = self.config.num_latent_tokens
        latents = self.post_layernorm(hidden_states[:, -num_tokens:])
        if self.config.is_legacy:
            # the released two-stage models reinterpret the [B, N, W] memory as [B, W, N] before the 1x1 conv
            batch_size, _, width = latents.shape
            latents = latents.reshape(batch_size, width, num_tokens).transpose(1, 2)
        return self.projection(latents)


class TiTokProxyHead(nn.Module):
    """Legacy head: per-position logits over the MaskGIT-VQGAN codebook (conv 1x1 -> tanh -> conv 1x1)."""

    def __init__(self, config: TiTokConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, config.proxy_codebook_size)

    def forward(self, hidden_states: torch.Tensor, grid_size: int) -> torch.Tensor:
        """[B, grid**2, W] -> [B, proxy_codebook_size, grid, grid]."""
        logits = self.fc2(torch.tanh(self.fc1(hidden_states)))
        return logits.transpose(1, 2).unflatten(2, (grid_size, grid_size))


class TiTokPixelHead(nn.Module):
    """Single-stage head: per-patch RGB prediction, pixel shuffle, then a 3x3 conv."""

    def __init__(self, config: TiTokConfig):
        super().__init__()
        self.patch_size = config.decoder_patch_size
        self.projection = nn.Linear(config.decoder_hidden_size, self.patch_size**2 * config.num_channels)
        self.conv_out = nn.Conv2d(config.num_channels, config.num_channels, 3, padding=1)

    def forward(self, hidden_states: torch.Tensor, grid_size: int) -> torch.Tensor:
        """[B, grid**2, W] -> [B, C, grid * p, grid * p]."""
        pixels = unpatchify(self.projection(hidden_states), self.patch_size, grid_size, grid_size)
        return self.conv_out(pixels)


class TiTokDecoder(nn.Module):
    def __init__(self, config: TiTokConfig):
        super().__init__()
        self.config = config
        width = config.decoder_hidden_size
        self.grid_size = config.image_size // config.decoder_patch_size
        self.embeddings = TiTokDecoderEmbeddings(config)
        self.pre_layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.layers = _make_layers(
            config,
            TiTokDecoderLayer,
            config.decoder_hidden_size,
            config.decoder_num_attention_heads,
            config.decoder_num_hidden_layers,
        )
        self.post_layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.head = TiTokProxyHead(config) if config.is_legacy else TiTokPixelHead(config)

    def forward(self, latents: torch.Tensor, text_guidance: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N, token_size] -> pixels [B, C, H, W], or proxy-code logits [B, K, grid, grid] for legacy heads."""
        hidden_states = self.pre_layernorm(self.embeddings(latents, text_guidance))
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        hidden_states = self.post_layernorm(hidden_states[:, 1 : 1 + self.grid_size**2])
        return self.head(hidden_states, self.grid_size)


class TiTokPixelResnetBlock(nn.Module):
    """MaskGIT-VQGAN residual block. When the width changes, the shortcut projection is applied to the block's
    *output* (not its input), exactly as in the released decoder."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(32, out_channels, eps=1e-6)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.nin_shortcut = nn.Conv2d(out_channels, out_channels, 1, bias=False) if in_channels != out_channels else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.conv1(F.silu(self.norm1(hidden_states)))
        hidden_states = self.conv2(F.silu(self.norm2(hidden_states)))
        if self.nin_shortcut is not None:
            residual = self.nin_shortcut(hidden_states)
        return hidden_states + residual


class TiTokPixelUpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, upsample: bool):
        super().__init__()
        self.block = nn.ModuleList(
            TiTokPixelResnetBlock(in_channels if i == 0 else out_channels, out_channels) for i in range(num_res_blocks)
        )
        self.upsample_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1) if upsample else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            hidden_states = block(hidden_states)
        if self.upsample_conv is not None:
            hidden_states = self.upsample_conv(F.interpolate(hidden_states, scale_factor=2.0, mode="nearest"))
        return hidden_states


class TiTokPixelDecoder(nn.Module):
    """The MaskGIT-VQGAN convolutional decoder (no attention) that stage-2 TiTok models fine-tune and ship."""

    def __init__(self, config: TiTokConfig):
        super().__init__()
        mult = config.pixel_decoder_channel_mult
        hidden, num_res = config.pixel_decoder_hidden_channels, config.pixel_decoder_num_res_blocks
        self.conv_in = nn.Conv2d(config.pixel_decoder_z_channels, hidden * mult[-1], 3, padding=1)
        self.mid = nn.ModuleList(TiTokPixelResnetBlock(hidden * mult[-1], hidden * mult[-1]) for _ in range(num_res))
        self.up = nn.ModuleList(
            TiTokPixelUpBlock(hidden * mult[min(i + 1, len(mult) - 1)], hidden * mult[i], num_res, upsample=i != 0)
            for i in range(len(mult))
        )
        self.norm_out = nn.GroupNorm(32, hidden * mult[0], eps=1e-6)
        self.conv_out = nn.Conv2d(hidden * mult[0], config.num_channels, 3, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[B, z_channels, g, g] -> [B, C, g * 2**(levels-1), ...]."""
        # channels-last activations make oneDNN's convolutions ~15% faster on CPU (no per-layer reorders)
        hidden_states = self.conv_in(hidden_states.contiguous(memory_format=torch.channels_last))
        for block in self.mid:
            hidden_states = block(hidden_states)
        for block in reversed(self.up):
            hidden_states = block(hidden_states)
        return self.conv_out(F.silu(self.norm_out(hidden_states))).contiguous()


class TiTokPixelCodebook(nn.Module):
    """The MaskGIT-VQGAN codebook: soft mixtures (stage-2 decode) or hard lookups (stage-1 proxy codes)."""

    def __init__(self, config: TiTokConfig):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(config.proxy_codebook_size, config.pixel_decoder_z_channels))

    def forward(self, probabilities: torch.Tensor | None = None, codes: torch.Tensor | None = None) -> torch.Tensor:
        """``probabilities`` [B, K, g, g] or ``codes`` [B, g, g] -> [B, z_channels, g, g] (float32)."""
        weight = self.embedding.float()
        if codes is not None:
            return F.embedding(codes, weight).permute(0, 3, 1, 2)
        return torch.einsum("bkhw,kd->bdhw", probabilities.float(), weight)


class TiTokPreTrainedModel(PreTrainedModel):
    config: TiTokConfig
    base_model_prefix = "titok"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "TiTokEncoderEmbeddings",
        "TiTokDecoderEmbeddings",
        "TiTokEncoderLayer",
        "TiTokDecoderLayer",
        "TiTokPixelResnetBlock",
    ]
    _keep_in_fp32_modules_strict = ["quantizer", "pixel_codebook"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if init_common_weights(module, std):
            return
        if isinstance(module, VectorQuantizer):
            init.uniform_(module.embedding, -1.0 / module.num_embeddings, 1.0 / module.num_embeddings)
        elif isinstance(module, TiTokPixelCodebook):
            init.trunc_normal_(module.embedding, std=std)
        elif isinstance(module, (TiTokEncoderEmbeddings, TiTokDecoderEmbeddings)):
            scale = module.class_embedding.shape[-1] ** -0.5
            for name, param in module.named_parameters(recurse=False):
                init.normal_(param, std=scale)


class TiTokModel(VisualTokenizerMixin, TiTokPreTrainedModel):
    r"""
    TiTok tokenizer. `encode` maps images in [0, 1] ([B, 3, H, W]) to `num_latent_tokens` 1D tokens; `decode` maps
    token ids [B, N] (VQ) or latents [B, N, token_size] back to images in [0, 1] (not clamped).

    Example:
    ```python
    >>> model = TiTokModel(TiTokConfig.from_variant("titok_l32"))
    >>> enc = model.encode(torch.rand(1, 3, 256, 256))     # enc.tokens: [1, 32], enc.latents: [1, 32, 12]
    >>> model.decode(enc.tokens).reconstruction.shape      # [1, 3, 256, 256]
    ```
    """

    def __init__(self, config: TiTokConfig):
        super().__init__(config)
        self.encoder = TiTokEncoder(config)
        if config.quantize_mode == "vq":
            self.quantizer = VectorQuantizer(
                config.codebook_size, config.token_size, config.use_l2_norm, config.commitment_cost
            )
        else:
            self.quantizer = None
        self.decoder = TiTokDecoder(config)
        if config.use_pixel_decoder:
            self.pixel_codebook = TiTokPixelCodebook(config)
            self.pixel_decoder = TiTokPixelDecoder(config)
        else:
            self.pixel_codebook = self.pixel_decoder = None
        # the MaskGIT-VQGAN decoder's full-resolution activations dominate decode memory: running it on slices of
        # two images cuts l32's batch-8 decode peak by ~1 GB at no measurable speed cost
        self.pixel_decoder_slice_size: int | None = 2
        self.post_init()

    def set_pixel_decoder_slice_size(self, slice_size: int | None) -> None:
        """Images per call of the MaskGIT-VQGAN pixel decoder (default 2); `None` decodes the whole batch at once."""
        if slice_size is not None and slice_size < 1:
            raise ValueError(f"slice_size must be a positive integer or None, got {slice_size}.")
        self.pixel_decoder_slice_size = slice_size

    @property
    def layout(self) -> TokenizerLayout:
        config = self.config
        return TokenizerLayout(
            inputs=("image",),
            tokens="1d",
            num_channels=config.num_channels,
            image_size=None,
            num_tokens=config.num_latent_tokens,
            vocab_size=config.codebook_size if config.quantize_mode == "vq" else None,
            latent_dim=config.token_size,
        )

    def validate_input_size(self, height: int, width: int) -> None:
        """Accepts what the original accepts: the stride-p patch conv drops remainder pixels and the [1 + g*g, W]
        position table is added to the flattened patch sequence, so any `height` x `width` with
        `(height // p) * (width // p) == g * g` encodes (sizes g*p .. g*p + p-1 per side for the square grid; other
        grids of g*g patches get the table in raster order, as in the original, a layout the model was not trained
        on). The decoder always produces the configured `image_size` square."""
        patch, grid = self.config.patch_size, self.config.image_size // self.config.patch_size
        if (height // patch) * (width // patch) != grid * grid:
            raise ValueError(
                f"pixel_values of size {height}x{width} (height x width) give {height // patch}x{width // patch} "
                f"patches of {patch} px; TiTok's position table holds exactly {grid * grid} ({grid}x{grid}), so use "
                f"{self.config.image_size}x{self.config.image_size} images (up to {patch - 1} extra pixels per side are "
                "dropped, as in the original); resize and crop with the model's image processor."
            )

    def _encode(
        self, pixel_values: torch.Tensor, sample_posterior: bool | None = None, generator=None
    ) -> TokenizerEncoderOutput:
        encoder_output = self.encoder(pixel_values)
        if self.quantizer is not None:
            quantized = self.quantizer(encoder_output)
            return TokenizerEncoderOutput(
                latents=quantized.quantized,
                tokens=quantized.indices,
                encoder_output=encoder_output,
                quantization_loss=quantized.loss,
            )
        posterior = DiagonalGaussianDistribution(encoder_output, dim=-1)
        if sample_posterior is None:
            sample_posterior = self.training
        latents = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return TokenizerEncoderOutput(
            latents=latents,
            encoder_output=encoder_output,
            posterior_logvar=posterior.logvar,
            quantization_loss=posterior.kl().mean() if self.training else None,
        )

    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True, **kwargs) -> TokenizerEncoderOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`): images in [0, 1], normally
                `image_size` square; see `validate_input_size` for the other sizes the original accepts.
            sample_posterior (`bool`, *optional*): VAE only; sample instead of returning the posterior mean
                (default: sample in training mode only). generator (`torch.Generator`, *optional*): for that sample.

        Returns: `TokenizerEncoderOutput` with `tokens` [B, N] (VQ), `latents` [B, N, token_size], `encoder_output`.
        """
        return super().encode(pixel_values, return_dict=return_dict, **kwargs)

    @apply_forward_hook
    def tokens_to_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N] ids -> [B, N, token_size] codebook vectors (l2-normalised when `use_l2_norm`)."""
        return self.quantizer.lookup(tokens)

    def _decode(self, latents: torch.Tensor, text_guidance: torch.Tensor | None = None) -> TiTokDecoderOutput:
        if self.config.use_text_guidance:
            expected = (self.config.text_context_length, self.config.text_embed_dim)
            if text_guidance is None:
                raise ValueError(
                    "this TA-TiTok decoder needs `text_guidance` (CLIP text hidden states of shape "
                    f"[batch, {expected[0]}, {expected[1]}])."
                )
            # a single text state is broadcast over the whole position table, as in the original
            if (
                text_guidance.ndim != 3
                or text_guidance.shape[1] not in (1, expected[0])
                or text_guidance.shape[2] != expected[1]
                or len(text_guidance) != len(latents)
            ):
                raise ValueError(
                    f"text_guidance must have shape [{len(latents)}, {expected[0]}, {expected[1]}] (or "
                    f"[{len(latents)}, 1, {expected[1]}], broadcast over the positions), got "
                    f"{tuple(text_guidance.shape)}."
                )
        elif text_guidance is not None:
            raise ValueError("text_guidance was given but this TiTok decoder is not text-aware (use_text_guidance=False).")
        decoded = self.decoder(latents, text_guidance)
        if not self.config.use_pixel_decoder:
            return TiTokDecoderOutput(reconstruction=decoded)
        mixture = self.pixel_codebook(probabilities=decoded.float().softmax(dim=1))
        reconstruction = self._run_pixel_decoder(mixture)
        return TiTokDecoderOutput(reconstruction=reconstruction, proxy_logits=decoded)

    def _run_pixel_decoder(self, vectors: torch.Tensor) -> torch.Tensor:
        vectors = vectors.to(self.pixel_decoder.conv_in.weight.dtype)
        size = self.pixel_decoder_slice_size or len(vectors)
        return torch.cat([self.pixel_decoder(chunk) for chunk in vectors.split(size)])

    def decode(self, tokens_or_latents: torch.Tensor, return_dict: bool = True, **kwargs) -> TiTokDecoderOutput:
        r"""
        Args:
            tokens_or_latents: `torch.LongTensor` [B, N] token ids (VQ models) or `torch.FloatTensor`
                [B, N, token_size] latents (VAE posterior mean or samples, or quantized values).
            text_guidance (`torch.FloatTensor` of shape `(batch_size, text_context_length, text_embed_dim)`):
                TA-TiTok only: CLIP text-encoder hidden states after the final LayerNorm (a length-1 sequence is
                broadcast over the position table, as in the original).

        Returns: `TiTokDecoderOutput` with `reconstruction` [B, 3, H, W] in [0, 1] (not clamped) and, for legacy
        models, `proxy_logits`.
        """
        return super().decode(tokens_or_latents, return_dict=return_dict, **kwargs)

    @apply_forward_hook
    def decode_proxy_codes(self, proxy_codes: torch.Tensor) -> torch.Tensor:
        """Stage-1 path of the legacy models: hard MaskGIT-VQGAN codes [B, g, g] -> images [B, 3, H, W] (not clamped)."""
        if not self.config.use_pixel_decoder:
            raise ValueError("decode_proxy_codes needs a model with the MaskGIT-VQGAN pixel decoder (use_pixel_decoder).")
        if proxy_codes.is_floating_point() or proxy_codes.ndim != 3:
            raise ValueError(f"proxy_codes must be an integer tensor [batch, grid, grid], got {proxy_codes.dtype} "
                             f"{tuple(proxy_codes.shape)}.")
        if int(proxy_codes.min()) < 0 or int(proxy_codes.max()) >= self.config.proxy_codebook_size:
            raise ValueError(f"proxy codes must be in [0, {self.config.proxy_codebook_size}).")
        return self._run_pixel_decoder(self.pixel_codebook(codes=proxy_codes))


__all__ = ["TiTokModel", "TiTokPreTrainedModel", "TiTokDecoderOutput"]
