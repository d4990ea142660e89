"""LARP: a video tokenizer with holistic queries (Wang et al., ICLR 2025, arXiv:2410.21264).

3D patches of a clip and learned holistic queries go through one ViT encoder; the query outputs are projected to a
small bottleneck and quantized by a stochastic l2-normalised VQ (argmax in evaluation, sampling in training or when
asked). A ViT decoder reads the projected codes together with fixed sin-cos patch queries and predicts the pixels of
every 3D patch. An optional GPT-style prior over code vectors (training only in the paper) aligns the token order
with autoregressive generation; its logits are returned when it is present.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration_larp import LARPConfig
from .layers import VisionEncoderLayer, get_1d_sincos_pos_embed, init_common_weights
from .quantizers import QuantizerOutput, VectorQuantizer
from .tokenizer_utils import (
    TokenizerDecoderOutput,
    TokenizerEncoderOutput,
    TokenizerLayout,
    TokenizerModelOutput,
    VisualTokenizerMixin,
    apply_forward_hook,
)


@dataclass
class LARPModelOutput(TokenizerModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
        Reconstruction MSE + quantizer loss (+ `prior_loss_weight` x prior cross-entropy with a prior).
    latents (`torch.FloatTensor` of shape `(batch_size, num_latent_tokens, bottleneck_dim)`):
        Quantized code vectors (l2-normalised codebook rows).
    reconstruction (`torch.FloatTensor` of shape `(batch_size, num_frames, num_channels, height, width)`):
        Decoded clip in [0, 1] (not clamped).
    tokens (`torch.LongTensor` of shape `(batch_size, num_latent_tokens)`): code ids.
    quantization_loss (`torch.FloatTensor` of shape `()`, *optional*): VQ loss in training mode.
    prior_logits (`torch.FloatTensor` of shape `(batch_size, num_latent_tokens - 1, codebook_size)`, *optional*):
        With a prior: teacher-forced logits of tokens 1..N-1 given the code vectors before them.
    prior_loss (`torch.FloatTensor` of shape `()`, *optional*): cross-entropy of `prior_logits` against the tokens.
    """

    prior_logits: torch.FloatTensor | None = None
    prior_loss: torch.FloatTensor | None = None


def get_larp_3d_sincos_pos_embed(embed_dim: int, grid_t: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """[grid_t * grid_h * grid_w, embed_dim] table in (t, h, w) order: a 2D MAE table ([emb(column) | emb(row)],
    half of the channels each) plus a full-width 1D table over time."""
    rows, columns = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    spatial = torch.cat(
        [get_1d_sincos_pos_embed(embed_dim // 2, columns), get_1d_sincos_pos_embed(embed_dim // 2, rows)], dim=1
    )
    temporal = get_1d_sincos_pos_embed(embed_dim, torch.arange(grid_t))
    return (temporal[:, None, :] + spatial[None]).reshape(-1, embed_dim)


def _register_position_table(module: nn.Module, name: str, table: torch.Tensor, learned: bool) -> None:
    """A position table: a fixed sin-cos buffer (not saved: recomputed from the config), or, with
    `config.learned_position_embeddings`, a saved parameter initialised to the same table."""
    if learned:
        module.register_parameter(name, nn.Parameter(table))
    else:
        module.register_buffer(name, table, persistent=False)


class LARPEmbeddings(nn.Module):
    """3D patch embedding with fixed (or learned) positions, followed by the learned holistic queries."""

    def __init__(self, config: LARPConfig):
        super().__init__()
        self.config = config
        width = config.encoder_hidden_size
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.patch_embedding = nn.Conv3d(config.num_channels, width, kernel_size=kernel, stride=kernel)
        self.latent_queries = nn.Parameter(torch.empty(config.num_latent_tokens, width))
        learned = config.learned_position_embeddings
        _register_position_table(self, "position_embedding", self.compute_position_embedding(), learned)

    def compute_position_embedding(self) -> torch.Tensor:
        config = self.config
        height, width = config.frame_size
        return get_larp_3d_sincos_pos_embed(
            config.encoder_hidden_size,
            config.num_frames // config.temporal_patch_size,
            height // config.patch_size,
            width // config.patch_size,
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, T, C, H, W] -> [B, T/tps * (H/p) * (W/p) + num_latent_tokens, encoder_hidden_size]; clips shorter than
        `num_frames` take the first rows of the position table."""
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.transpose(1, 2).to(dtype)).flatten(2).transpose(1, 2)
        patches = patches + self.position_embedding[: patches.shape[1]].to(dtype)
        queries = self.latent_queries.to(dtype).expand(patches.shape[0], -1, -1)
        return torch.cat([patches, queries], dim=1)


class LARPDecoderEmbeddings(nn.Module):
    """Projects code vectors to the decoder width, adds 1D sin-cos (or learned) latent positions and appends the
    patch queries (fixed 3D sin-cos (or learned) positions + an optional learned token-type vector)."""

    def __init__(self, config: LARPConfig):
        super().__init__()
        self.config = config
        width = config.decoder_hidden_size
        self.post_quant_proj = nn.Linear(config.bottleneck_dim, width)
        if config.use_decoder_patch_query_token_type_embed:
            self.patch_query_type_embedding = nn.Parameter(torch.empty(1, width))
        else:
            self.patch_query_type_embedding = None
        latent, patch = self.compute_position_embeddings()
        _register_position_table(self, "latent_position_embedding", latent, config.learned_position_embeddings)
        _register_position_table(self, "patch_query_embedding", patch, config.learned_position_embeddings)

    def compute_position_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        height, width = config.frame_size
        latent = get_1d_sincos_pos_embed(
            config.decoder_hidden_size, torch.arange(config.num_latent_tokens), config.latent_pe_scale_factor
        )
        patch = get_larp_3d_sincos_pos_embed(
            config.decoder_hidden_size,
            config.num_frames // config.decoder_temporal_patch_size,
            height // config.decoder_patch_size,
            width // config.decoder_patch_size,
        )
        return latent, patch

    def forward(self, latents: torch.Tensor, num_patches: int) -> torch.Tensor:
        """latents [B, N, bottleneck_dim] -> [B, N + num_patches, decoder_hidden_size]."""
        dtype = self.post_quant_proj.weight.dtype
        hidden_states = self.post_quant_proj(latents.to(dtype)) + self.latent_position_embedding.to(dtype)
        queries = self.patch_query_embedding[:num_patches].to(dtype)
        if self.patch_query_type_embedding is not None:
            queries = queries + self.patch_query_type_embedding.to(dtype)
        return torch.cat([hidden_states, queries.expand(latents.shape[0], -1, -1)], dim=1)


class LARPEncoderLayer(VisionEncoderLayer):
    pass


class LARPDecoderLayer(VisionEncoderLayer):
    pass


class LARPPriorLayer(VisionEncoderLayer):
    pass


def _vit_layer(config: LARPConfig, layer_class, hidden_size: int, num_heads: int, layer_norm_eps: float, qkv_bias: bool):
    return layer_class(
        config,
        hidden_size=hidden_size,
        num_heads=num_heads,
        intermediate_size=int(hidden_size * config.mlp_ratio),
        hidden_act=config.hidden_act,
        layer_norm_eps=layer_norm_eps,
        qkv_bias=qkv_bias,
    )


class LARPTransformer(nn.Module):
    """A stack of pre-norm ViT layers over [context ; queries] that returns the query outputs (no final norm)."""

    def __init__(self, config: LARPConfig, layer_class, hidden_size: int, num_layers: int, num_heads: int):
        super().__init__()
        self.layers = nn.ModuleList(
            _vit_layer(config, layer_class, hidden_size, num_heads, config.layer_norm_eps, qkv_bias=False)
            for _ in range(num_layers)
        )

    def forward(self, hidden_states: torch.Tensor, num_queries: int) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states[:, -num_queries:]


class LARPVectorQuantizer(VectorQuantizer):
    """LARP's stochastic VQ: inputs and codebook are l2-normalised and compared by cosine similarity. Evaluation takes
    the most similar code; training (or `sample=True`) draws the code from softmax(similarity / temperature).

    Args:
        num_embeddings / embedding_dim: codebook size and code dimension.
        temperature: temperature of the sampling softmax (0.03 for the release).
        commitment_cost: weight of the commitment term of the training loss.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, temperature: float, commitment_cost: float = 0.25):
        super().__init__(num_embeddings, embedding_dim, use_l2_norm=True, commitment_cost=commitment_cost)
        self.temperature = temperature

    def forward(
        self, latents: torch.Tensor, sample: bool | None = None, generator: torch.Generator | None = None
    ) -> QuantizerOutput:
        """``latents``: [..., embedding_dim] -> normalised code vectors (float32), ids [...]; ``sample`` defaults to
        ``self.training``."""
        if latents.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"LARPVectorQuantizer expects latents with last dimension {self.embedding_dim}, got {tuple(latents.shape)}."
            )
        z = F.normalize(latents.float(), dim=-1)
        codebook = self.codebook()
        similarity = torch.matmul(z, codebook.t())
        if self.training if sample is None else sample:
            probabilities = F.softmax(similarity / self.temperature, dim=-1).reshape(-1, self.num_embeddings)
            indices = torch.multinomial(probabilities, 1, generator=generator).view(z.shape[:-1])
        else:
            indices = similarity.argmax(dim=-1)
        return self.quantizer_output(z, indices, codebook)


class LARPPriorEmbeddings(nn.Module):
    def __init__(self, config: LARPConfig):
        super().__init__()
        self.input_proj = nn.Linear(config.bottleneck_dim, config.prior_hidden_size)
        self.position_embedding = nn.Parameter(torch.empty(config.prior_max_position_embeddings, config.prior_hidden_size))

    def forward(self, code_vectors: torch.Tensor) -> torch.Tensor:
        hidden_states = self.input_proj(code_vectors.to(self.input_proj.weight.dtype))
        return hidden_states + self.position_embedding[: hidden_states.shape[1]].to(hidden_states.dtype)


class LARPPrior(nn.Module):
    """Causal GPT over code vectors (the paper's "AR prior"): from the code vectors 0..i-1 it predicts a vector for
    position i (l2-normalised when `prior_l2_normalized`, as released); logits over the codebook are its dot products
    with the l2-normalised codebook / `prior_latent_ce_temperature`."""

    def __init__(self, config: LARPConfig):
        super().__init__()
        self.l2_normalized = config.prior_l2_normalized
        width = config.prior_hidden_size
        self.embeddings = LARPPriorEmbeddings(config)
        self.layers = nn.ModuleList(
            _vit_layer(config, LARPPriorLayer, width, config.prior_num_attention_heads, 1e-5, qkv_bias=True)
            for _ in range(config.prior_num_hidden_layers)
        )
        self.final_layernorm = nn.LayerNorm(width, eps=1e-5)
        self.head = nn.Linear(width, config.bottleneck_dim)

    def forward(self, code_vectors: torch.Tensor) -> torch.Tensor:
        """[B, N, bottleneck_dim] -> [B, N, bottleneck_dim] predictions (l2-normalised if `prior_l2_normalized`);
        position 0 (nothing to predict it from) repeats the first input vector."""
        inputs = code_vectors[:, :-1]
        hidden_states = self.embeddings(inputs)
        for layer in self.layers:
            hidden_states = layer(hidden_states, is_causal=True)
        predictions = self.head(self.final_layernorm(hidden_states)).float()
        predictions = torch.cat([code_vectors[:, :1].float(), predictions], dim=1)
        return F.normalize(predictions, dim=-1) if self.l2_normalized else predictions


class LARPPixelHead(nn.Module):
    """LayerNorm + linear to the pixels of one decoder patch, then patches -> [B, T, C, H, W]."""

    def __init__(self, config: LARPConfig):
        super().__init__()
        self.config = config
        patch_pixels = config.decoder_temporal_patch_size * config.decoder_patch_size**2 * config.num_channels
        self.norm = nn.LayerNorm(config.decoder_hidden_size, eps=config.final_layer_norm_eps)
        self.linear = nn.Linear(config.decoder_hidden_size, patch_pixels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        config = self.config
        height, width = config.frame_size
        pt, p, c = config.decoder_temporal_patch_size, config.decoder_patch_size, config.num_channels
        grid_h, grid_w = height // p, width // p
        patches = self.linear(self.norm(hidden_states))
        batch_size, grid_t = patches.shape[0], patches.shape[1] // (grid_h * grid_w)
        patches = patches.view(batch_size, grid_t, grid_h, grid_w, pt, p, p, c)
        # b t h w pt p1 p2 c -> b (t pt) c (h p1) (w p2)
        return patches.permute(0, 1, 4, 7, 2, 5, 3, 6).reshape(batch_size, grid_t * pt, c, height, width)


class LARPPreTrainedModel(PreTrainedModel):
    config: LARPConfig
    base_model_prefix = "larp"
    main_input_name = "pixel_values"
    input_modalities = ("video",)
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "LARPEmbeddings",
        "LARPDecoderEmbeddings",
        "LARPPriorEmbeddings",
        "LARPEncoderLayer",
        "LARPDecoderLayer",
        "LARPPriorLayer",
    ]
    _keep_in_fp32_modules_strict = ["quantizer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if init_common_weights(module, std):
            return
        if isinstance(module, LARPVectorQuantizer):
            init.normal_(module.embedding, std=1.0)
        elif isinstance(module, LARPEmbeddings):
            init.normal_(module.latent_queries, std=std)
            init.copy_(module.position_embedding, module.compute_position_embedding())
        elif isinstance(module, LARPDecoderEmbeddings):
            if module.patch_query_type_embedding is not None:
                init.normal_(module.patch_query_type_embedding, std=std)
            latent, patch = module.compute_position_embeddings()
            init.copy_(module.latent_position_embedding, latent)
            init.copy_(module.patch_query_embedding, patch)
        elif isinstance(module, LARPPriorEmbeddings):
            init.normal_(module.position_embedding, std=std)


class LARPModel(VisualTokenizerMixin, LARPPreTrainedModel):
    r"""
    LARP video tokenizer. `encode` maps clips `[B, T, 3, H, W]` in [0, 1] (transformers' video layout) to
    `num_latent_tokens` 1D tokens; `decode(tokens, num_frames=T)` maps them back to clips in [0, 1] (not clamped).
    Clips may be shorter than `config.num_frames` (a multiple of `temporal_patch_size` frames); the token count does
    not fix the length, so `decode` takes `num_frames` (default `config.num_frames`).

    Example:
    ```python
    >>> model = LARPModel(LARPConfig.from_variant("larp_l_long"))
    >>> enc = model.encode(torch.rand(1, 16, 3, 128, 128))   # enc.tokens: [1, 1024], enc.latents: [1, 1024, 16]
    >>> model.decode(enc.tokens, num_frames=16).reconstruction.shape   # [1, 16, 3, 128, 128]
    ```
    """

    #: the token count does not fix the clip length: `decode` takes `num_frames` (read by the video pipeline)
    decode_takes_num_frames = True

    def __init__(self, config: LARPConfig):
        super().__init__(config)
        self.embeddings = LARPEmbeddings(config)
        self.encoder = LARPTransformer(
            config, LARPEncoderLayer, config.encoder_hidden_size, config.encoder_num_hidden_layers,
            config.encoder_num_attention_heads,
        )
        self.quant_proj = nn.Linear(config.encoder_hidden_size, config.bottleneck_dim)
        self.quantizer = LARPVectorQuantizer(
            config.codebook_size, config.bottleneck_dim, config.stochastic_temperature, config.commitment_cost
        )
        self.decoder_embeddings = LARPDecoderEmbeddings(config)
        self.decoder = LARPTransformer(
            config, LARPDecoderLayer, config.decoder_hidden_size, config.decoder_num_hidden_layers,
            config.decoder_num_attention_heads,
        )
        self.pixel_head = LARPPixelHead(config)
        self.prior = LARPPrior(config) if config.prior_hidden_size is not None else None
        self.post_init()

    # -- input validation: clips [B, T, C, H, W] -----------------------------------------------------------------
    @property
    def layout(self) -> TokenizerLayout:
        config = self.config
        return TokenizerLayout(
            inputs=("video",), tokens="1d", num_channels=config.num_channels, image_size=config.frame_size,
            num_tokens=config.num_latent_tokens, vocab_size=config.codebook_size, latent_dim=config.bottleneck_dim,
        )

    def _check_num_frames(self, num_frames: int, temporal_patch_size: int, what: str) -> None:
        """Clip lengths the original accepts: exactly `config.num_frames` (its strict full-clip path; when that is not
        a multiple of the temporal patch, the strided patch convolution never reads the last `num_frames % tps`
        frames and the decoder predicts `tps (num_frames // tps)` frames), or a shorter multiple of the patch."""
        maximum = self.config.num_frames
        if num_frames == maximum:
            return
        if num_frames < temporal_patch_size or num_frames > maximum or num_frames % temporal_patch_size:
            raise ValueError(
                f"{what} must have {maximum} frames (the full clip) or a multiple of {temporal_patch_size} frames "
                f"between {temporal_patch_size} and {maximum}, got {num_frames} frames."
            )

    def validate_pixel_values(self, pixel_values) -> None:
        """The layout's checks, then the clip length (see `_check_num_frames`)."""
        super().validate_pixel_values(pixel_values)
        self._check_num_frames(pixel_values.shape[1], self.config.temporal_patch_size, "pixel_values")

    # -- tokenizer hooks -------------------------------------------------------------------------------------------
    def _encode(
        self, pixel_values: torch.Tensor, sample: bool | None = None, generator: torch.Generator | None = None
    ) -> TokenizerEncoderOutput:
        hidden_states = self.embeddings(pixel_values)
        hidden_states = self.encoder(hidden_states, self.config.num_latent_tokens)
        projected = self.quant_proj(hidden_states)
        quantized = self.quantizer(projected, sample=sample, generator=generator)
        return TokenizerEncoderOutput(
            latents=quantized.quantized,
            tokens=quantized.indices,
            encoder_output=projected,
            quantization_loss=quantized.loss,
        )

    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True, **kwargs) -> TokenizerEncoderOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_frames, 3, height, width)`): clips in [0, 1];
                `num_frames` a multiple of `temporal_patch_size`, at most `config.num_frames`.
            sample (`bool`, *optional*): draw codes from the quantizer's softmax instead of taking the most similar
                one (default: only in training mode). generator (`torch.Generator`, *optional*): for that draw.

        Returns: `TokenizerEncoderOutput` with `tokens` [B, N], `latents` [B, N, bottleneck_dim] (normalised code
        vectors) and `encoder_output` [B, N, bottleneck_dim] (the projection before quantization).
        """
        return super().encode(pixel_values, return_dict=return_dict, **kwargs)

    @apply_forward_hook
    def tokens_to_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N] ids -> [B, N, bottleneck_dim] l2-normalised code vectors."""
        return self.quantizer.lookup(tokens)

    def _decode(self, latents: torch.Tensor, num_frames: int | None = None) -> TokenizerDecoderOutput:
        config = self.config
        num_frames = config.num_frames if num_frames is None else int(num_frames)
        self._check_num_frames(num_frames, config.decoder_temporal_patch_size, "decode(num_frames=...)")
        height, width = config.frame_size
        grid = (num_frames // config.decoder_temporal_patch_size) * (height // config.decoder_patch_size) * (
            width // config.decoder_patch_size
        )
        hidden_states = self.decoder(self.decoder_embeddings(latents, grid), grid)
        return TokenizerDecoderOutput(reconstruction=self.pixel_head(hidden_states))

    def decode(self, tokens_or_latents: torch.Tensor, return_dict: bool = True, **kwargs) -> TokenizerDecoderOutput:
        r"""
        Args:
            tokens_or_latents: `torch.LongTensor` [B, N] token ids or `torch.FloatTensor` [B, N, bottleneck_dim]
                code vectors (`encode(...).latents`).
            num_frames (`int`, *optional*): length of the clip to decode (default `config.num_frames`).

        Returns: `TokenizerDecoderOutput` with `reconstruction` [B, num_frames, 3, H, W] in [0, 1] (not clamped).
        """
        return super().decode(tokens_or_latents, return_dict=return_dict, **kwargs)

    # -- prior -----------------------------------------------------------------------------------------------------
    @apply_forward_hook
    def prior_predict(self, code_vectors: torch.Tensor) -> torch.Tensor:
        """The prior's prediction [B, N, bottleneck_dim] (l2-normalised if `config.prior_l2_normalized`) for code
        vectors [B, N, bottleneck_dim]."""
        if self.prior is None:
            raise ValueError("this LARP model has no prior (config.prior_hidden_size is None).")
        return self.prior(code_vectors)

    @apply_forward_hook
    def prior_logits(self, code_vectors: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, N-1, codebook_size] of tokens 1..N-1 from code vectors [B, N, bottleneck_dim]."""
        predictions = self.prior_predict(code_vectors)
        return torch.matmul(predictions[:, 1:], self.quantizer.codebook().t()) / self.config.prior_latent_ce_temperature

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_frames: int | None = None,
        return_dict: bool = True,
    ) -> LARPModelOutput:
        r"""
        Reconstructs `pixel_values` ([B, T, 3, H, W]; the clip is decoded at its own length unless `num_frames` is
        given). With a prior, also returns its teacher-forced `prior_logits` ([B, N-1, K]) and their cross-entropy
        against the tokens, `prior_loss`. With `labels` (target clips, usually `pixel_values`), `loss` = MSE +
        quantizer loss (+ `prior_loss_weight` x `prior_loss`). Training draws the codes (the stochastic VQ).
        """
        self.validate_pixel_values(pixel_values)
        num_frames = pixel_values.shape[1] if num_frames is None else num_frames
        output = LARPModelOutput(**super().forward(pixel_values, labels=labels, num_frames=num_frames))
        if self.prior is not None:
            output.prior_logits = self.prior_logits(output.latents)
            output.prior_loss = F.cross_entropy(
                output.prior_logits.flatten(0, 1).float(), output.tokens[:, 1:].reshape(-1)
            )
            if output.loss is not None:
                output.loss = output.loss + self.config.prior_loss_weight * output.prior_loss
        return output if return_dict else output.to_tuple()


__all__ = ["LARPModel", "LARPModelOutput", "LARPPreTrainedModel", "get_larp_3d_sincos_pos_embed"]
