"""FlexTok: resampling images into ordered 1D token sequences of flexible length (1 to 256 tokens).

A frozen diffusers `AutoencoderKL` maps images to latents; a ViT encoder reads the latent patches with learned
register tokens under a causal register mask, and FSQ turns the registers into token ids. Because register `i` only
sees the patches and registers `<= i`, every prefix of the sequence is itself a valid (coarser) encoding. A
rectified-flow ViT decoder denoises VAE latents conditioned on any prefix (positions past the prefix hold a learned
mask token), with classifier-free or adaptive projected guidance (APG).
Paper: https://arxiv.org/abs/2502.13967, original code: https://github.com/apple/ml-flextok.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_flextok import FlexTokConfig
from .layers import VisionEncoderLayer, get_1d_sincos_pos_embed, init_common_weights, patchify, unpatchify
from .quantizers import FiniteScalarQuantizer
from .scheduling_flextok import FlexTokFlowSampler, FlexTokTrainingObjective, rng_device
from .tokenizer_utils import (
    TokenizerDecoderOutput,
    TokenizerEncoderOutput,
    TokenizerLayout,
    TokenizerModelOutput,
    VisualTokenizerMixin,
    apply_forward_hook,
)


@dataclass
class FlexTokEncoderOutput(TokenizerEncoderOutput):
    r"""
    latents (`torch.FloatTensor` of shape `(batch_size, num_tokens, len(fsq_levels))`):
        FSQ codes in [-1, 1] (float32), what the decoder consumes.
    tokens (`torch.LongTensor` of shape `(batch_size, num_tokens)`):
        Ordered token ids (coarse to fine); any prefix is a valid encoding.
    encoder_output (`torch.FloatTensor` of shape `(batch_size, num_tokens, len(fsq_levels))`):
        Register outputs before quantization.
    vae_latents (`torch.FloatTensor` of shape `(batch_size, vae_latent_channels, h, w)`):
        Scaled VAE latents the encoder read.
    """

    vae_latents: torch.FloatTensor | None = None


@dataclass
class FlexTokDecoderOutput(TokenizerDecoderOutput):
    r"""
    reconstruction (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
        Decoded images in [-1, 1] (not clamped), of the requested `image_size` (default `config.image_size`).
    vae_latents (`torch.FloatTensor` of shape `(batch_size, vae_latent_channels, h, w)`):
        Final sample of the rectified flow (scaled VAE latents) that the VAE decoded.
    """

    vae_latents: torch.FloatTensor | None = None


@dataclass
class FlexTokVelocityOutput(ModelOutput):
    r"""
    velocity (`torch.FloatTensor` of shape `(batch_size, vae_latent_channels, h, w)`):
        Predicted rectified-flow velocity `noise - clean_latents` at the given time.
    repa_features (`torch.FloatTensor` of shape `(batch_size, grid, grid, decoder_hidden_size)`, *optional*):
        Patch-token features after decoder layer `config.repa_layer_index` (REPA alignment target).
    """

    velocity: torch.FloatTensor | None = None
    repa_features: torch.FloatTensor | None = None


@dataclass
class FlexTokModelOutput(TokenizerModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
        Eval mode: MSE between the sampled reconstruction and `labels`. Training mode: the rectified-flow loss, MSE
        between the predicted and the true velocity `noise - vae_latents(labels)`.
    latents / tokens: the encoding (see `FlexTokEncoderOutput`).
    reconstruction (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
        Eval mode: the sampled decode. Training mode: the VAE decode of the one-step clean-latent estimate
        `x_t - t * velocity` (detached).
    velocity (`torch.FloatTensor`, *optional*): training mode: the predicted velocity.
    keep_k (`torch.LongTensor` of shape `(batch_size,)`, *optional*): training mode: registers kept by nested dropout.
    """

    velocity: torch.FloatTensor | None = None
    keep_k: torch.LongTensor | None = None


def register_attention_mask(num_patches: int, num_registers: int, device=None) -> torch.Tensor:
    """Encoder mask, bool [1, 1, L, L] (True = attend): patches see all patches and no register; register `i` sees
    all patches and registers `0..i`. This causality is what makes every token prefix a valid encoding."""
    length = num_patches + num_registers
    index = torch.arange(length, device=device)
    causal = index[None, :] <= index[:, None]
    mask = causal | (index[None, :] < num_patches)
    mask[:num_patches, num_patches:] = False
    return mask[None, None]


# decode settings that a training step accepts (so one set of kwargs serves both modes) and ignores
_DECODE_ONLY_KWARGS = {"num_steps", "guidance_scale", "guidance_type", "token_lengths"}


def crop_position_table(table: torch.Tensor, grid_shape: tuple[int, int], grid_h: int, grid_w: int) -> torch.Tensor:
    """The top-left `grid_h` x `grid_w` corner of a row-major [rows * columns, D] table of `grid_shape` (rows,
    columns), as [grid_h * grid_w, D]: how the original fits its position table to a smaller latent (absolute
    positions, no interpolation)."""
    rows, columns = grid_shape
    if (grid_h, grid_w) == (rows, columns):
        return table
    return table.view(rows, columns, -1)[:grid_h, :grid_w].reshape(grid_h * grid_w, -1)


def _flextok_sincos_table(width: int, rows: int, columns: int) -> torch.Tensor:
    """The original's fixed [rows * columns, width] table (row-major). It computes [sin(a), cos(a), sin(b), cos(b)]
    over a column-major meshgrid and reads the result back row-major, so entry n gets a = n // rows and
    b = n % rows: on a square grid a is the row and b the column (the MAE-style [emb(y) | emb(x)] table); on a
    rectangular one the pairs are not (row, column), and are kept as the original computes them."""
    index = torch.arange(rows * columns)
    first, second = index // rows, index % rows
    return torch.cat([get_1d_sincos_pos_embed(width // 2, first), get_1d_sincos_pos_embed(width // 2, second)], dim=1)


class FlexTokLayerNorm(nn.LayerNorm):
    """Parameter-free LayerNorm computed in float32 (the original's `Fp32LayerNorm`), so half-precision weights do not
    change the normalisation statistics."""

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__(hidden_size, eps=eps, elementwise_affine=False, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(hidden_states.float(), self.normalized_shape, None, None, self.eps)
        return normed.to(hidden_states.dtype)


class FlexTokEncoderEmbeddings(nn.Module):
    """Linear patch embedding of the VAE latent, its fixed 2D sin-cos table and the learned register tokens."""

    def __init__(self, config: FlexTokConfig):
        super().__init__()
        width = config.encoder_hidden_size
        self.patch_size = config.patch_size
        self.grid_shape = config.grid_shape
        self.patch_embedding = nn.Linear(config.vae_latent_channels * config.patch_size**2, width)
        # fixed sin-cos table, stored in the checkpoint as in the original (a buffer, so it is never trained)
        self.register_buffer("position_embedding", torch.empty(math.prod(config.grid_shape), width), persistent=True)
        self.register_tokens = nn.Parameter(torch.empty(config.num_latent_tokens, width))

    def forward(self, vae_latents: torch.Tensor, num_registers: int) -> torch.Tensor:
        """[B, C, h, w] latents -> [B, num_patches + num_registers, width]."""
        dtype = self.patch_embedding.weight.dtype
        grid_h, grid_w = (side // self.patch_size for side in vae_latents.shape[-2:])
        patches = self.patch_embedding(patchify(vae_latents.to(dtype), self.patch_size))
        patches = patches + crop_position_table(self.position_embedding, self.grid_shape, grid_h, grid_w).to(dtype)
        registers = self.register_tokens[:num_registers].to(dtype).expand(patches.shape[0], -1, -1)
        return torch.cat([patches, registers], dim=1)


class FlexTokDecoderEmbeddings(nn.Module):
    """Decoder inputs: register tokens from FSQ codes (projection + learned 1D positions, nested-dropout mask token,
    CFG null condition) and the patch embedding of the noised VAE latent with its fixed sin-cos table."""

    def __init__(self, config: FlexTokConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.patch_size = config.patch_size
        self.grid_shape = config.grid_shape
        self.num_registers = config.num_latent_tokens
        self.token_projection = nn.Linear(len(config.fsq_levels), width)
        self.register_position_embedding = nn.Parameter(torch.empty(config.num_latent_tokens, width))
        self.mask_token = nn.Parameter(torch.empty(width))
        self.null_condition = nn.Parameter(torch.empty(width)) if config.null_condition == "learned" else None
        self.patch_embedding = nn.Linear(config.vae_latent_channels * config.patch_size**2, width)
        self.register_buffer("position_embedding", torch.empty(math.prod(config.grid_shape), width), persistent=True)

    def embed_registers(
        self, codes: torch.Tensor, keep_k: torch.Tensor, null_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """codes [B, k, len(levels)] (k <= N), keep_k [B], null_mask [B] bool -> registers [B, N, width].

        Positions `>= keep_k` hold the mask token (written after the position embedding); images flagged in
        `null_mask` get the null condition at every position (unconditional CFG branch)."""
        dtype = self.token_projection.weight.dtype
        batch_size, num_codes, _ = codes.shape
        if num_codes < self.num_registers:
            codes = F.pad(codes, (0, 0, 0, self.num_registers - num_codes))
        registers = self.token_projection(codes.to(dtype)) + self.register_position_embedding.to(dtype)
        positions = torch.arange(self.num_registers, device=registers.device)
        dropped = positions[None, :] >= keep_k.to(registers.device)[:, None]
        registers = torch.where(dropped[..., None], self.mask_token.to(dtype), registers)
        if null_mask is not None:
            null = self.null_condition.to(dtype) if self.null_condition is not None else registers.new_zeros(())
            registers = torch.where(null_mask.to(registers.device)[:, None, None], null, registers)
        return registers

    def embed_patches(self, noisy_latents: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] -> [B, num_patches, width]."""
        dtype = self.patch_embedding.weight.dtype
        grid_h, grid_w = (side // self.patch_size for side in noisy_latents.shape[-2:])
        patches = self.patch_embedding(patchify(noisy_latents.to(dtype), self.patch_size))
        return patches + crop_position_table(self.position_embedding, self.grid_shape, grid_h, grid_w).to(dtype)

    def forward(
        self,
        noisy_latents: torch.Tensor,
        codes: torch.Tensor,
        keep_k: torch.Tensor,
        null_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The decoder sequence [B, num_patches + N, width]: noised latent patches, then registers."""
        return torch.cat([self.embed_patches(noisy_latents), self.embed_registers(codes, keep_k, null_mask)], dim=1)


class FlexTokTimestepEmbedding(nn.Module):
    """Sinusoidal features of the flow time (cos first, max period 256, time scaled by 1000/max_timestep), then
    Linear - SiLU - Linear."""

    def __init__(self, config: FlexTokConfig):
        super().__init__()
        self.embedding_dim = config.timestep_embedding_dim
        self.max_period = config.timestep_max_period
        self.max_timestep = config.max_timestep
        self.linear_1 = nn.Linear(config.timestep_embedding_dim, config.decoder_hidden_size)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(config.decoder_hidden_size, config.decoder_hidden_size)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        """timesteps [B] in [0, max_timestep] -> [B, decoder_hidden_size]."""
        half = self.embedding_dim // 2
        arange = torch.arange(half, dtype=torch.float32, device=timesteps.device)
        freqs = torch.exp(-math.log(self.max_period) * arange / half)
        freqs = (1000.0 / self.max_timestep) * freqs
        args = timesteps[:, None].float() * freqs[None]
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.embedding_dim % 2:
            features = F.pad(features, (0, 1))
        features = features.to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(features)))


def _flextok_layer_kwargs(config: FlexTokConfig, hidden_size: int, num_heads: int, intermediate_size: int) -> dict:
    return dict(
        hidden_size=hidden_size,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
        hidden_act=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        norm_affine=False,
        qkv_bias=False,
        out_bias=False,
        mlp_bias=False,
        gated_mlp=True,
        qk_norm="layernorm",
        # muP attention scale (8 / head_dim), not 1/sqrt(head_dim)
        scaling=config.attention_scale_multiplier / (hidden_size // num_heads),
    )


class FlexTokEncoderLayer(VisionEncoderLayer):
    """Pre-norm block: parameter-free float32 LayerNorms, bias-free attention with QK-norm and muP scale, SwiGLU."""

    def __init__(self, config: FlexTokConfig, decoder: bool = False):
        if decoder:
            sizes = (config.decoder_hidden_size, config.decoder_num_attention_heads, config.decoder_intermediate_size)
        else:
            sizes = (config.encoder_hidden_size, config.encoder_num_attention_heads, config.encoder_intermediate_size)
        kwargs = _flextok_layer_kwargs(config, *sizes)
        super().__init__(config, **kwargs)
        eps, head_dim = config.layer_norm_eps, self.self_attn.head_dim
        self.norm1 = FlexTokLayerNorm(kwargs["hidden_size"], eps)
        self.norm2 = FlexTokLayerNorm(kwargs["hidden_size"], eps)
        self.self_attn.q_norm = FlexTokLayerNorm(head_dim, eps)
        self.self_attn.k_norm = FlexTokLayerNorm(head_dim, eps)


class FlexTokDecoderLayer(FlexTokEncoderLayer):
    """Encoder block with adaLN-zero modulation from the timestep embedding. With `adaln_expansion=2` the patch
    tokens and the register tokens get separate (gate, shift, scale) sets."""

    def __init__(self, config: FlexTokConfig):
        super().__init__(config, decoder=True)
        self.expansion = config.adaln_expansion
        width = config.decoder_hidden_size
        self.adaln_modulation = nn.Linear(width, self.expansion * 6 * width)

    def forward(
        self,
        hidden_states: torch.Tensor,
        time_embedding: torch.Tensor,
        num_patches: int,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """hidden_states [B, num_patches + N, D], time_embedding [B, D] -> [B, num_patches + N, D]."""
        batch_size, length, width = hidden_states.shape
        modulation = self.adaln_modulation(F.silu(time_embedding)).view(batch_size, self.expansion, 6, width)
        if self.expansion == 2:
            modulation = torch.cat(
                [
                    modulation[:, :1].expand(-1, num_patches, -1, -1),
                    modulation[:, 1:].expand(-1, length - num_patches, -1, -1),
                ],
                dim=1,
            )
        # chunk order of the original adaLN projection
        gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp = modulation.unbind(dim=2)
        attn_input = self.norm1(hidden_states) * (1.0 + scale_msa) + shift_msa
        attn_output, _ = self.self_attn(attn_input, attention_mask, **kwargs)
        hidden_states = hidden_states + gate_msa * attn_output
        mlp_input = self.norm2(hidden_states) * (1.0 + scale_mlp) + shift_mlp
        return hidden_states + gate_mlp * self.mlp(mlp_input)


class FlexTokEncoder(nn.Module):
    def __init__(self, config: FlexTokConfig):
        super().__init__()
        self.config = config
        self.embeddings = FlexTokEncoderEmbeddings(config)
        self.layers = nn.ModuleList(FlexTokEncoderLayer(config) for _ in range(config.encoder_num_hidden_layers))
        self.norm = FlexTokLayerNorm(config.encoder_hidden_size, config.layer_norm_eps)
        self.latent_projection = nn.Linear(config.encoder_hidden_size, len(config.fsq_levels))

    def forward(self, vae_latents: torch.Tensor, num_registers: int) -> torch.Tensor:
        """[B, C, h, w] scaled VAE latents -> [B, num_registers, len(fsq_levels)] pre-quantization latents."""
        hidden_states = self.embeddings(vae_latents, num_registers)
        num_patches = hidden_states.shape[1] - num_registers
        attention_mask = register_attention_mask(num_patches, num_registers, hidden_states.device)
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask)
        return self.latent_projection(self.norm(hidden_states[:, num_patches:]))


class FlexTokDecoderHead(nn.Module):
    """Final adaLN (shift, scale) on the patch tokens, then a linear map to latent patches."""

    def __init__(self, config: FlexTokConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.norm = FlexTokLayerNorm(width, config.layer_norm_eps)
        self.adaln_modulation = nn.Linear(width, 2 * width)
        self.projection = nn.Linear(width, config.vae_latent_channels * config.patch_size**2)

    def forward(self, patch_states: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        """[B, P, D], [B, D] -> [B, P, C * p * p]."""
        shift, scale = self.adaln_modulation(F.silu(time_embedding))[:, None].chunk(2, dim=-1)
        return self.projection(self.norm(patch_states) * (1.0 + scale) + shift)


class FlexTokDecoder(nn.Module):
    """Rectified-flow ViT over [noised latent patches ; registers] with full attention inside each image."""

    def __init__(self, config: FlexTokConfig):
        super().__init__()
        self.config = config
        self.embeddings = FlexTokDecoderEmbeddings(config)
        self.time_embedding = FlexTokTimestepEmbedding(config)
        self.layers = nn.ModuleList(FlexTokDecoderLayer(config) for _ in range(config.decoder_num_hidden_layers))
        self.head = FlexTokDecoderHead(config)

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        codes: torch.Tensor,
        keep_k: torch.Tensor,
        null_mask: torch.Tensor | None = None,
        output_repa_features: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Velocity [B, C, h, w] (in the decoder's dtype) and optionally the REPA-layer patch features."""
        hidden_states = self.embeddings(noisy_latents, codes, keep_k, null_mask)
        num_patches = hidden_states.shape[1] - self.config.num_latent_tokens
        time_embedding = self.time_embedding(timesteps)
        repa_features = None
        for index, layer in enumerate(self.layers):
            hidden_states = layer(hidden_states, time_embedding, num_patches)
            if output_repa_features and index == self.config.repa_layer_index:
                repa_features = hidden_states[:, :num_patches]
        patches = self.head(hidden_states[:, :num_patches], time_embedding)
        grid_h, grid_w = (side // self.config.patch_size for side in noisy_latents.shape[-2:])
        if repa_features is not None:
            repa_features = repa_features.unflatten(1, (grid_h, grid_w))
        return unpatchify(patches, self.config.patch_size, grid_h, grid_w), repa_features


class FlexTokPreTrainedModel(PreTrainedModel):
    config: FlexTokConfig
    base_model_prefix = "flextok"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "FlexTokEncoderEmbeddings",
        "FlexTokDecoderEmbeddings",
        "FlexTokEncoderLayer",
        "FlexTokDecoderLayer",
        "FlexTokTimestepEmbedding",
        "FlexTokDecoderHead",
    ]
    # the VAE runs in float32 in the original (dtype_override="fp32"), also when the rest is bf16/fp16; FSQ has no
    # weights but computes in float32
    _keep_in_fp32_modules_strict = ["vae"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if init_common_weights(module, std):
            return
        if isinstance(module, (FlexTokEncoderEmbeddings, FlexTokDecoderEmbeddings)):
            width = module.position_embedding.shape[-1]
            init.copy_(module.position_embedding, _flextok_sincos_table(width, *self.config.grid_shape))
            for param in module.parameters(recurse=False):
                init.trunc_normal_(param, std=std)


class FlexTokModel(VisualTokenizerMixin, FlexTokPreTrainedModel):
    r"""
    FlexTok tokenizer. `encode` maps images in [-1, 1] ([B, 3, H, W]; 256x256 for the releases, any size whose latent
    the position tables cover is accepted, see `validate_input_size`) to up to `num_latent_tokens` ordered token
    ids (coarse to fine); `decode` maps any prefix of them (ids [B, k] or FSQ codes [B, k, len(levels)], 1 <= k <= N)
    back to images in [-1, 1] by integrating the rectified flow from noise with an Euler sampler.

    Example:
    ```python
    >>> model = FlexTokModel(FlexTokConfig.from_variant("flextok_d12_d12_in1k"))
    >>> tokens = model.encode(torch.rand(1, 3, 256, 256) * 2 - 1).tokens         # [1, 256]
    >>> image = model.decode(tokens[:, :16], num_steps=20, guidance_scale=7.5, guidance_type="apg",
    ...                      generator=torch.Generator().manual_seed(0)).reconstruction   # [1, 3, 256, 256]
    ```

    The VAE runs one image at a time by default (diffusers' `enable_slicing`: same results, peak memory of one image
    instead of the batch's); `model.vae.disable_slicing()` runs whole batches through it.
    """

    def __init__(self, config: FlexTokConfig):
        super().__init__(config)
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL  # heavy: imported when FlexTok is used

        self.vae = AutoencoderKL.from_config(config.vae_config)
        # measured on CPU at 8x256x256: as fast as whole batches, 1/5 of their peak memory (benchmarks/README.md);
        # posterior samples are drawn from the joined moments, so the random draws do not change
        self.vae.enable_slicing()
        self.encoder = FlexTokEncoder(config)
        self.quantizer = FiniteScalarQuantizer(config.fsq_levels)
        self.decoder = FlexTokDecoder(config)
        self.post_init()

    @property
    def layout(self) -> TokenizerLayout:
        config = self.config
        return TokenizerLayout(
            inputs=("image",),
            tokens="1d",
            num_channels=config.num_channels,
            image_size=None,
            max_tokens=config.num_latent_tokens,
            vocab_size=config.codebook_size,
            latent_dim=len(config.fsq_levels),
        )

    def vae_latent_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the VAE latent of a `height` x `width` image: every downsampling block of the diffusers encoder
        pads one pixel at the bottom/right and runs a stride-2 3x3 conv, i.e. halves the size rounding down."""
        for _ in range(self.config.vae_downsample_factor.bit_length() - 1):
            if min(height, width) < 2:
                return 0, 0
            height, width = height // 2, width // 2
        return height, width

    def _check_latent_size(self, latent_h: int, latent_w: int, what: str) -> None:
        """A latent size the position tables cover: both sides multiples of `patch_size`, at most `grid_shape`
        patches (rows, columns) (the original crops its tables to the latent and cannot extend them)."""
        config = self.config
        patch, factor = config.patch_size, config.vae_downsample_factor
        (rows, columns), (height, width) = config.grid_shape, config.image_hw
        fits = patch <= latent_h <= rows * patch and patch <= latent_w <= columns * patch
        if latent_h % patch or latent_w % patch or not fits:
            raise ValueError(
                f"{what}: FlexTok needs a VAE latent whose sides are multiples of the patch size {patch} and at most "
                f"{rows * patch}x{columns * patch} (its {rows}x{columns} position table), got a {latent_h}x{latent_w} "
                f"latent. Images whose height and width are multiples of {factor * patch} up to {height}x{width} "
                "(height x width) work, square or not."
            )

    def validate_input_size(self, height: int, width: int) -> None:
        """Accepts every image size the original accepts: any `height` x `width` whose VAE latent (see
        `vae_latent_size`) has sides that are multiples of `patch_size` and at most `grid_shape * patch_size`."""
        latent_h, latent_w = self.vae_latent_size(height, width)
        self._check_latent_size(latent_h, latent_w, f"pixel_values of size {height}x{width} (height x width)")

    def decode_latent_size(self, image_size: int | tuple | None, noise: torch.Tensor | None = None) -> tuple[int, int]:
        """The VAE latent (h, w) a decode samples for an output of `image_size` pixels (an int for squares, or
        (height, width)); default: the size of `noise` if given, else `config.image_size`."""
        factor = self.config.vae_downsample_factor
        if image_size is None:
            if torch.is_tensor(noise) and noise.ndim == 4:
                return tuple(noise.shape[-2:])
            image_size = self.config.image_size
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or not all(isinstance(side, int) and side > 0 for side in size):
            raise ValueError(f"image_size must be an int or a (height, width) pair of positive ints, got {image_size!r}.")
        if size[0] % factor or size[1] % factor:
            raise ValueError(
                f"image_size {size[0]}x{size[1]} is not a multiple of the VAE downsampling factor {factor}; decoded "
                "images are always latent size x factor (an odd input size decodes to the size rounded down)."
            )
        latent = (size[0] // factor, size[1] // factor)
        self._check_latent_size(*latent, f"image_size {size[0]}x{size[1]}")
        return latent

    def _forward_decode_defaults(self, encoded: FlexTokEncoderOutput) -> dict:
        factor = self.config.vae_downsample_factor
        return {"image_size": tuple(side * factor for side in encoded.vae_latents.shape[-2:])}

    @property
    def _vae_dtype(self) -> torch.dtype:
        return self.vae.encoder.conv_in.weight.dtype

    @apply_forward_hook
    def vae_encode(
        self, pixel_values: torch.Tensor, sample_posterior: bool | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> scaled VAE latents [B, C, H/f, W/f] (float32): posterior mode (or a
        sample) times `config.vae_scaling_factor`."""
        if sample_posterior is None:
            sample_posterior = self.config.vae_sample_posterior
        posterior = self.vae.encode(pixel_values.to(self._vae_dtype)).latent_dist
        latents = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return latents.float() * self.config.vae_scaling_factor

    @apply_forward_hook
    def vae_decode(self, vae_latents: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents [B, C, h, w] -> images [B, 3, h*f, w*f] in [-1, 1] (not clamped)."""
        return self.vae.decode(vae_latents.to(self._vae_dtype) / self.config.vae_scaling_factor).sample

    def _encode(
        self,
        pixel_values: torch.Tensor,
        num_tokens: int | None = None,
        sample_posterior: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> FlexTokEncoderOutput:
        if num_tokens is None:
            num_tokens = self.config.num_latent_tokens
        maximum = self.config.num_latent_tokens
        if not isinstance(num_tokens, int) or not 1 <= num_tokens <= maximum:
            raise ValueError(f"FlexTok encodes 1 to {maximum} tokens per image (any prefix), got num_tokens={num_tokens!r}.")
        # the VAE is frozen: FlexTok never backpropagates into it
        with torch.no_grad():
            vae_latents = self.vae_encode(pixel_values, sample_posterior=sample_posterior, generator=generator)
        encoder_output = self.encoder(vae_latents, num_tokens)
        quantized = self.quantizer(encoder_output)
        return FlexTokEncoderOutput(
            latents=quantized.quantized,
            tokens=quantized.indices,
            encoder_output=encoder_output,
            vae_latents=vae_latents,
        )

    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True, **kwargs) -> FlexTokEncoderOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`): images in [-1, 1], of any size
                `validate_input_size` accepts (non-square and smaller than `config.image_size` included).
            num_tokens (`int`, *optional*): encode only the first `num_tokens` registers (1..N); the result equals
                the prefix of the full encoding, at a lower cost.
            sample_posterior (`bool`, *optional*): sample the VAE posterior instead of taking its mode (default:
                `config.vae_sample_posterior`). generator (`torch.Generator`, *optional*): for that sample.

        Returns: `FlexTokEncoderOutput` with `tokens` [B, k], `latents` (FSQ codes) [B, k, len(fsq_levels)],
        `encoder_output` and `vae_latents`.
        """
        return super().encode(pixel_values, return_dict=return_dict, **kwargs)

    @apply_forward_hook
    def tokens_to_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, k] ids -> [B, k, len(fsq_levels)] FSQ codes in [-1, 1]."""
        return self.quantizer.lookup(tokens)

    @apply_forward_hook
    def predict_velocity(
        self,
        latents: torch.Tensor,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor | float,
        keep_k: torch.Tensor | None = None,
        unconditional: bool | torch.Tensor = False,
        output_repa_features: bool = False,
    ) -> FlexTokVelocityOutput:
        r"""
        One decoder evaluation.

        Args:
            latents (`torch.FloatTensor` of shape `(batch_size, k, len(fsq_levels))`): FSQ codes of a token prefix.
            noisy_latents (`torch.FloatTensor` of shape `(batch_size, C, h, w)`): `t * noise + (1 - t) * vae_latents`.
            timesteps (`torch.FloatTensor` of shape `(batch_size,)` or `float`): flow time t in [0, max_timestep].
            keep_k (`torch.LongTensor` of shape `(batch_size,)`, *optional*): registers to keep per image (<= k);
                default k.
            unconditional (`bool` or `torch.BoolTensor` of shape `(batch_size,)`): replace the registers by the null
                condition (the unconditional branch of guidance).
            output_repa_features (`bool`): also return the patch features after layer `config.repa_layer_index`.
        """
        self.validate_latents(latents)
        batch_size, num_codes = latents.shape[:2]
        device = noisy_latents.device
        if torch.is_tensor(noisy_latents) and noisy_latents.ndim == 4:
            self._check_latent_size(*noisy_latents.shape[-2:], "noisy_latents")
        self._check_noise(noisy_latents, batch_size, tuple(noisy_latents.shape[-2:]), "noisy_latents")
        if not torch.is_tensor(timesteps):
            timesteps = torch.full((batch_size,), float(timesteps), device=device)
        keep_k = self._check_keep_k(keep_k, batch_size, num_codes, device, "keep_k")
        null_mask = torch.as_tensor(unconditional, dtype=torch.bool, device=device).expand(batch_size)
        if output_repa_features and self.config.repa_layer_index is None:
            raise ValueError("output_repa_features=True needs config.repa_layer_index.")
        velocity, repa = self.decoder(noisy_latents, timesteps, latents, keep_k, null_mask, output_repa_features)
        return FlexTokVelocityOutput(velocity=velocity, repa_features=repa)

    @staticmethod
    def _check_keep_k(keep_k, batch_size: int, num_codes: int, device, name: str) -> torch.Tensor:
        """Per-image numbers of kept registers as a LongTensor [B] in [1, num_codes] (default: all)."""
        if keep_k is None:
            return torch.full((batch_size,), num_codes, dtype=torch.long, device=device)
        keep_k = torch.as_tensor(keep_k, dtype=torch.long, device=device)
        if keep_k.shape != (batch_size,) or int(keep_k.min()) < 1 or int(keep_k.max()) > num_codes:
            raise ValueError(f"{name} must be {batch_size} integers in [1, {num_codes}], got {keep_k.tolist()}.")
        return keep_k

    def _check_noise(self, noise: torch.Tensor, batch_size: int, latent_size: tuple, name: str = "noise") -> None:
        expected = (batch_size, self.config.vae_latent_channels, *latent_size)
        if not torch.is_tensor(noise) or tuple(noise.shape) != expected:
            got = tuple(noise.shape) if torch.is_tensor(noise) else type(noise).__name__
            raise ValueError(f"{name} must be a tensor of shape {list(expected)} (VAE latent layout), got {got}.")

    def _sample_noise(
        self, batch_size: int, latent_size: tuple, device, generator: torch.Generator | None
    ) -> torch.Tensor:
        shape = (1, self.config.vae_latent_channels, *latent_size)
        # one draw per image, in order, as the original sampler does (same numbers for the same generator seed)
        draw_device = rng_device(generator, device)
        draws = [torch.randn(shape, generator=generator, device=draw_device) for _ in range(batch_size)]
        return torch.cat(draws).to(device)

    def _decode(
        self,
        latents: torch.Tensor,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_type: str | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        token_lengths: torch.Tensor | None = None,
        image_size: int | tuple | None = None,
    ) -> FlexTokDecoderOutput:
        sampler = FlexTokFlowSampler.from_config(self.config, num_steps, guidance_scale, guidance_type)
        batch_size, num_codes = latents.shape[:2]
        device = latents.device
        keep_k = self._check_keep_k(token_lengths, batch_size, num_codes, device, "token_lengths")
        latent_size = self.decode_latent_size(image_size, noise)
        if noise is None:
            noise = self._sample_noise(batch_size, latent_size, device, generator)
        else:
            self._check_noise(noise, batch_size, latent_size)
        if sampler.guided:
            # the conditional and unconditional branches run as one batch
            null_mask = torch.arange(2 * batch_size, device=device) >= batch_size
            latents, keep_k = torch.cat([latents, latents]), torch.cat([keep_k, keep_k])
        else:
            null_mask = None

        def velocity_fn(sample, timesteps):
            return self.decoder(sample, timesteps, latents, keep_k, null_mask)[0]

        sample = sampler.sample(velocity_fn, noise.to(device=device, dtype=torch.float32))
        return FlexTokDecoderOutput(reconstruction=self.vae_decode(sample), vae_latents=sample)

    def decode(self, tokens_or_latents: torch.Tensor, return_dict: bool = True, **kwargs) -> FlexTokDecoderOutput:
        r"""
        Args:
            tokens_or_latents: `torch.LongTensor` [B, k] token ids or `torch.FloatTensor` [B, k, len(fsq_levels)]
                FSQ codes, for any prefix length 1 <= k <= `num_latent_tokens`.
            num_steps (`int`, *optional*): Euler steps from t=1 to t=0 (default `config.num_inference_steps`).
            guidance_scale (`float`, *optional*): guidance scale; 1.0 runs no unconditional branch
                (default `config.guidance_scale`).
            guidance_type (`str`, *optional*): `"cfg"` (classifier-free guidance) or `"apg"` (adaptive projected
                guidance) (default `config.guidance_type`).
            generator (`torch.Generator`, *optional*): draws the initial noise (one [1, C, h, w] draw per image).
            noise (`torch.FloatTensor` of shape `(batch_size, C, h, w)`, *optional*): explicit initial noise.
            token_lengths (`torch.LongTensor` of shape `(batch_size,)`, *optional*): per-image prefix lengths when the
                batch holds padded sequences of different lengths.
            image_size (`int` or `(height, width)`, *optional*): size of the decoded images in pixels, a multiple of
                the VAE factor times `patch_size` up to `config.image_size` per side (the original's
                `vae_image_sizes`, given in pixels); default: the size of `noise` if given, else `config.image_size`.
                `forward` decodes to the size of the encoded latent.

        Returns: `FlexTokDecoderOutput` with `reconstruction` [B, 3, H, W] in [-1, 1] (not clamped) and the final
        `vae_latents`.
        """
        return super().decode(tokens_or_latents, return_dict=return_dict, **kwargs)

    def _training_forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        keep_k: torch.Tensor | None = None,
        **decode_kwargs,
    ) -> FlexTokModelOutput:
        unknown = set(decode_kwargs) - _DECODE_ONLY_KWARGS
        if unknown:
            raise ValueError(
                f"unexpected arguments {sorted(unknown)} for a training step; it takes generator, noise, timesteps and "
                f"keep_k (decode settings {sorted(_DECODE_ONLY_KWARGS)} are accepted and ignored)."
            )
        objective = FlexTokTrainingObjective.from_config(self.config)
        encoded = self._encode(pixel_values)
        clean = encoded.vae_latents
        if labels is not None and labels is not pixel_values:
            if labels.shape != pixel_values.shape:
                raise ValueError(
                    f"labels must have the shape of pixel_values {tuple(pixel_values.shape)}, got "
                    f"{tuple(labels.shape)}."
                )
            with torch.no_grad():
                clean = self.vae_encode(labels)
        batch_size, device = clean.shape[0], clean.device
        if timesteps is None:
            timesteps = objective.sample_timesteps(batch_size, generator, device)
        timesteps = torch.as_tensor(timesteps, dtype=torch.float32).to(device).expand(batch_size)
        if noise is None:
            noise = torch.randn(clean.shape, generator=generator, device=rng_device(generator, device)).to(device)
        else:
            self._check_noise(noise, batch_size, tuple(clean.shape[-2:]))
        if keep_k is None:
            keep_k = objective.sample_keep_k(batch_size, generator, device)
        else:
            keep_k = self._check_keep_k(keep_k, batch_size, self.config.num_latent_tokens, device, "keep_k")
        null_mask = objective.sample_null_mask(batch_size, generator, device)
        noisy = objective.add_noise(clean, noise, timesteps)
        velocity, _ = self.decoder(noisy, timesteps, encoded.latents, keep_k, null_mask)
        loss = objective.loss(velocity, clean, noise) if labels is not None else None
        with torch.no_grad():
            reconstruction = self.vae_decode(noisy - timesteps[:, None, None, None] * velocity.float())
        return FlexTokModelOutput(
            loss=loss,
            latents=encoded.latents,
            reconstruction=reconstruction,
            tokens=encoded.tokens,
            velocity=velocity,
            keep_k=keep_k,
        )

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool = True, **kwargs
    ):
        r"""
        Eval mode: `decode(encode(pixel_values))` with the decode arguments in `kwargs`; with `labels`, `loss` is the
        pixel MSE to them.

        Training mode (the original training step): encode, then one decoder pass on `x_t = t * noise + (1 - t) * x0`
        (x0 = scaled VAE latents of `labels`, or of `pixel_values` without labels) with nested dropout (a random
        number of kept registers per image, `config.nested_dropout_mode`) and null-condition dropout
        (`config.cfg_dropout_prob`). `loss` = MSE(velocity, noise - x0). `generator=` makes every random draw (t,
        noise, kept registers, null condition) reproducible; `noise=`, `timesteps=` ([B] in [0, 1]) and `keep_k=`
        ([B]) fix them explicitly.
        """
        if not self.training:
            return super().forward(pixel_values, labels=labels, return_dict=return_dict, **kwargs)
        self.validate_pixel_values(pixel_values)
        output = self._training_forward(pixel_values, labels, **kwargs)
        return output if return_dict else output.to_tuple()


__all__ = ["FlexTokModel", "FlexTokPreTrainedModel", "FlexTokDecoderOutput", "FlexTokEncoderOutput"]
