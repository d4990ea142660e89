"""LARP configuration (video tokenizer with holistic queries and an optional AR prior) and its released variants."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


# The GPT-style priors the original registry names in `prior_model.name` (all have 64 channels per head).
LARP_PRIOR_PRESETS = {
    "gptc-L": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    "gptc-B": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "gptc-M": {"hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8},
    "gptc-S": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "gptc-XS": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 6},
    "gptc-XXS": {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 4},
}

# Released tokenizers: name -> original hub id and config fields (random weights until converted).
LARP_VARIANTS = {
    "larp_l_long": {
        "hub_id": "hywang66/LARP-L-long-tokenizer", "image_size": 128, "num_frames": 16, "patch_size": 8,
        "temporal_patch_size": 4, "num_latent_tokens": 1024, "encoder_hidden_size": 768,
        "encoder_num_hidden_layers": 12, "encoder_num_attention_heads": 12, "decoder_hidden_size": 768,
        "decoder_num_hidden_layers": 12, "decoder_num_attention_heads": 12, "bottleneck_dim": 16,
        "codebook_size": 8192, "prior": "gptc-S",
    },
}


@strict
class LARPConfig(PreTrainedConfig):
    r"""
    Configuration of a LARP video tokenizer (Wang et al., 2025, arXiv:2410.21264): 3D patches and learned holistic
    queries go through one ViT encoder; the query outputs are projected to `bottleneck_dim`, quantized by a stochastic
    l2-normalised VQ, projected back and decoded by a ViT decoder whose queries are fixed 3D sin-cos patch positions.

    Args:
        image_size (`int` or `list[int]`): frame size, square side or `[height, width]` (128 for the release).
        num_frames (`int`): clip length T the position tables are built for (16); shorter clips whose length is a
            multiple of `temporal_patch_size` are accepted (they use the first position rows).
        num_channels (`int`): frame channels.
        patch_size / temporal_patch_size (`int`): encoder 3D patch (8 x 8 pixels x 4 frames).
        decoder_patch_size / decoder_temporal_patch_size (`int`): patch the decoder predicts per query.
        num_latent_tokens (`int`): holistic queries = tokens per clip (1024); independent of the patch count.
        encoder_hidden_size / encoder_num_hidden_layers / encoder_num_attention_heads (`int`): encoder ViT size.
        decoder_hidden_size / decoder_num_hidden_layers / decoder_num_attention_heads (`int`): decoder ViT size.
        mlp_ratio (`float`), hidden_act (`str`): MLP of the ViT layers.
        layer_norm_eps (`float`): epsilon of the ViT layers' LayerNorms. LARP was trained with timm < 1.0.16, whose
            `Block` uses 1e-5 (newer timm silently switches to 1e-6); keep 1e-5 for the released weights.
        final_layer_norm_eps (`float`): epsilon of the LayerNorm before the pixel head (1e-6).
        bottleneck_dim (`int`): dimension of a code vector. codebook_size (`int`): vocabulary size.
        stochastic_temperature (`float`): temperature of the softmax over cosine similarities that the quantizer
            samples from in training (or when asked); evaluation takes the argmax.
        commitment_cost (`float`): weight of the commitment term of the VQ loss.
        latent_pe_scale_factor (`float`): frequency base of the decoder's 1D sin-cos latent positions.
        use_decoder_patch_query_token_type_embed (`bool`): add a learned vector to every decoder patch query.
        prior_hidden_size (`int`, *optional*): width of the AR prior (a causal GPT over code vectors, training only);
            `None` builds the tokenizer without a prior.
        prior_num_hidden_layers / prior_num_attention_heads (`int`): prior size.
        prior_max_position_embeddings (`int`): rows of the prior's learned position table.
        prior_latent_ce_temperature (`float`): temperature of the prior's logits over the codebook.
        prior_loss_weight (`float`): weight of the prior's cross-entropy in the training loss.
        attention_dropout (`float`), initializer_range (`float`): training settings.
    """

    model_type = "larp"

    image_size: int | list[int] = 128
    num_frames: int = 16
    num_channels: int = 3
    patch_size: int = 8
    temporal_patch_size: int = 4
    decoder_patch_size: int = 8
    decoder_temporal_patch_size: int = 4
    num_latent_tokens: int = 1024
    encoder_hidden_size: int = 768
    encoder_num_hidden_layers: int = 12
    encoder_num_attention_heads: int = 12
    decoder_hidden_size: int = 768
    decoder_num_hidden_layers: int = 12
    decoder_num_attention_heads: int = 12
    mlp_ratio: float = 4.0
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    final_layer_norm_eps: float = 1e-6
    bottleneck_dim: int = 16
    codebook_size: int = 8192
    stochastic_temperature: float = 0.03
    commitment_cost: float = 0.25
    latent_pe_scale_factor: float = 10000.0
    use_decoder_patch_query_token_type_embed: bool = True
    prior_hidden_size: int | None = None
    prior_num_hidden_layers: int = 12
    prior_num_attention_heads: int = 6
    prior_max_position_embeddings: int = 1024
    prior_latent_ce_temperature: float = 1.0
    prior_loss_weight: float = 0.06
    attention_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if isinstance(self.image_size, (list, tuple)):
            self.image_size = [int(s) for s in self.image_size]
        super().__post_init__(**kwargs)

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of a frame."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else (size[0], size[1])

    def validate_architecture(self):
        height, width = self.frame_size
        for name, patch, temporal in (
            ("", self.patch_size, self.temporal_patch_size),
            ("decoder_", self.decoder_patch_size, self.decoder_temporal_patch_size),
        ):
            if height % patch or width % patch:
                raise ValueError(f"image_size {height}x{width} must be divisible by {name}patch_size ({patch}).")
            if self.num_frames % temporal:
                raise ValueError(
                    f"num_frames ({self.num_frames}) must be divisible by {name}temporal_patch_size ({temporal})."
                )
        for name, hidden, heads in (
            ("encoder", self.encoder_hidden_size, self.encoder_num_attention_heads),
            ("decoder", self.decoder_hidden_size, self.decoder_num_attention_heads),
            ("prior", self.prior_hidden_size, self.prior_num_attention_heads),
        ):
            if hidden is not None and hidden % heads:
                raise ValueError(f"{name} hidden size ({hidden}) must be divisible by its head count ({heads}).")
        if self.prior_hidden_size is not None and self.prior_max_position_embeddings < self.num_latent_tokens:
            raise ValueError(
                f"prior_max_position_embeddings ({self.prior_max_position_embeddings}) must cover the "
                f"{self.num_latent_tokens} tokens."
            )

    @classmethod
    def from_variant(cls, name: str, with_prior: bool = False, **kwargs) -> "LARPConfig":
        """Config of a released tokenizer from `LARP_VARIANTS` (random weights; convert the release for weights)."""
        if name not in LARP_VARIANTS:
            raise ValueError(f"unknown LARP variant {name!r}; known: {sorted(LARP_VARIANTS)}.")
        variant = dict(LARP_VARIANTS[name])
        variant.pop("hub_id")
        prior = LARP_PRIOR_PRESETS[variant.pop("prior")]
        if with_prior:
            variant |= {f"prior_{key}": value for key, value in prior.items()}
        return cls(**(variant | kwargs))


__all__ = ["LARPConfig", "LARP_PRIOR_PRESETS", "LARP_VARIANTS"]
