"""LARP configuration (video tokenizer with holistic queries and an optional AR prior) and its released variants."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_utils import VariantConfigMixin


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
class LARPConfig(VariantConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a LARP video tokenizer (Wang et al., 2025, arXiv:2410.21264): 3D patches and learned holistic
    queries go through one ViT encoder; the query outputs are projected to `bottleneck_dim`, quantized by a stochastic
    l2-normalised VQ, projected back and decoded by a ViT decoder whose queries are fixed 3D sin-cos patch positions.

    Args:
        image_size (`int` or `list[int]`): frame size, square side or `[height, width]` (128 for the release).
        num_frames (`int`): clip length T the position tables are built for (16); shorter clips whose length is a
            multiple of `temporal_patch_size` are accepted (they use the first position rows). Like the original, a T
            that is not a multiple is allowed: its last `T % temporal_patch_size` frames are never read and the
            reconstruction has `temporal_patch_size * (T // temporal_patch_size)` frames.
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
        learned_position_embeddings (`bool`): the encoder patch positions, decoder latent positions and decoder patch
            queries are saved parameters instead of fixed sin-cos tables. The converter sets it for the original's
            non-released variants (`learned_encoder_patch_pe`, `learned_decoder_latent_pe`,
            `learned_decoder_patch_query_embed`, `use_encoder_patch_token_type_embed`,
            `use_decoder_latent_token_type_embed`), whose per-axis tables and token-type vectors it sums into them.
        prior_hidden_size (`int`, *optional*): width of the AR prior (a causal GPT over code vectors, training only);
            `None` builds the tokenizer without a prior.
        prior_num_hidden_layers / prior_num_attention_heads (`int`): prior size.
        prior_max_position_embeddings (`int`): rows of the prior's learned position table.
        prior_latent_ce_temperature (`float`): temperature of the prior's logits over the codebook.
        prior_l2_normalized (`bool`): l2-normalise the prior's predictions (the original `GPTC` flag `l2_normalized`,
            true in every release; the logits are then cosine similarities).
        prior_loss_weight (`float`): weight of the prior's cross-entropy in the training loss.
        attention_dropout (`float`), initializer_range (`float`): training settings.
    """

    model_type = "larp"
    variants = LARP_VARIANTS

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
    learned_position_embeddings: bool = False
    prior_hidden_size: int | None = None
    prior_num_hidden_layers: int = 12
    prior_num_attention_heads: int = 6
    prior_max_position_embeddings: int = 1024
    prior_latent_ce_temperature: float = 1.0
    prior_l2_normalized: bool = True
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
            if self.num_frames < temporal:  # a remainder is allowed: the original never reads those frames
                raise ValueError(
                    f"num_frames ({self.num_frames}) must be at least {name}temporal_patch_size ({temporal})."
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
    def variant_fields(cls, variant: dict) -> dict:
        """A released tokenizer without its (training-only) prior; add it with `**LARPConfig.prior_fields(name)`."""
        return {key: value for key, value in variant.items() if key not in ("hub_id", "prior")}

    @staticmethod
    def prior_fields(preset: str) -> dict:
        """`prior_*` config fields of a `LARP_PRIOR_PRESETS` prior, e.g. `from_variant("larp_l_long",
        **LARPConfig.prior_fields("gptc-S"))`."""
        if preset not in LARP_PRIOR_PRESETS:
            raise ValueError(f"unknown LARP prior {preset!r}; known: {sorted(LARP_PRIOR_PRESETS)}.")
        return {f"prior_{key}": value for key, value in LARP_PRIOR_PRESETS[preset].items()}


# Released generators: name -> original hub id and config fields.
LARP_AR_VARIANTS = {
    "larp_l_long_ar": {
        "hub_id": "hywang66/LARP-L-long-AR", "vocab_size": 8192, "hidden_size": 1280, "num_hidden_layers": 30,
        "num_attention_heads": 20, "intermediate_size": 3584, "num_classes": 101, "max_position_embeddings": 1024,
    },
    "larp_l_long_ar_fp": {
        "hub_id": "hywang66/LARP-L-long-AR-FP", "vocab_size": 8192, "hidden_size": 1280, "num_hidden_layers": 30,
        "num_attention_heads": 20, "intermediate_size": 3584, "frame_prediction": True, "num_condition_tokens": 1025,
        "max_position_embeddings": 1024,
    },
}


@strict
class LARPARConfig(VariantConfigMixin, PreTrainedConfig):
    r"""
    Configuration of the LARP autoregressive generator (LlamaGen-style decoder with learned absolute positions and no
    RoPE): class-conditional (`frame_prediction=False`) or frame prediction (`frame_prediction=True`, conditioned on
    the tokens of the first frames followed by a separator).

    Token ids of `input_ids`: `0..vocab_size-1` are LARP codes. Class-conditional models read the class label `c` as
    the id `vocab_size + c` (`c = num_classes` is the null class of classifier-free guidance); frame-prediction
    models have one more code id, `vocab_size`, the separator closing the condition.

    Args:
        vocab_size (`int`): LARP codebook size (8192). hidden_size / num_hidden_layers / num_attention_heads (`int`):
            decoder size. num_key_value_heads (`int`, *optional*): grouped-query heads (default: all heads).
        intermediate_size (`int`): SwiGLU width (`find_multiple(int(8 * hidden / 3), multiple_of)` in the original).
        hidden_act (`str`), mlp_bias (`bool`): SwiGLU activation and bias. rms_norm_eps (`float`): RMSNorm epsilon.
        max_position_embeddings (`int`): code tokens per clip (1024).
        num_classes (`int`): classes of a class-conditional model (101 for UCF-101).
        class_dropout_prob (`float`): training probability of replacing the class by the null class (its row exists
            only when this is > 0).
        frame_prediction (`bool`): condition on tokens instead of a class.
        num_condition_tokens (`int`): the original's `cls_token_num`: length of the condition of frame prediction
            (condition tokens + separator); class-conditional models embed the class as one token whatever this is
            (as the original does), a value > 1 only adds `num_condition_tokens - 1` rows to the position table.
        use_fixed_pe (`bool`): sin-cos absolute positions instead of learned ones.
        embedding_dropout / hidden_dropout / attention_dropout (`float`): training dropouts (tokens, residual and
            SwiGLU outputs, attention probabilities).
        initializer_range (`float`): std of the weight init.
    """

    model_type = "larp_ar"
    variants = LARP_AR_VARIANTS
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 8192
    hidden_size: int = 1280
    num_hidden_layers: int = 30
    num_attention_heads: int = 20
    num_key_value_heads: int | None = None
    intermediate_size: int = 3584
    hidden_act: str = "silu"
    mlp_bias: bool = False
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 1024
    num_classes: int = 101
    class_dropout_prob: float = 0.1
    frame_prediction: bool = False
    num_condition_tokens: int = 1
    use_fixed_pe: bool = False
    embedding_dropout: float = 0.1
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def condition_length(self) -> int:
        """Tokens of the condition in a sequence: `num_condition_tokens` for frame prediction, 1 (the class) for
        class-conditional models."""
        return self.num_condition_tokens if self.frame_prediction else 1

    @property
    def input_vocab_size(self) -> int:
        """Number of valid `input_ids` (codes plus the class ids or the separator)."""
        if self.frame_prediction:
            return self.vocab_size + 1
        return self.vocab_size + self.num_classes + (1 if self.class_dropout_prob > 0 else 0)

    def validate_architecture(self):
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}), itself divisible by num_key_value_heads ({self.num_key_value_heads})."
            )
        if self.num_condition_tokens < 1:
            raise ValueError(f"num_condition_tokens must be >= 1, got {self.num_condition_tokens}.")


__all__ = ["LARPARConfig", "LARPConfig", "LARP_AR_VARIANTS", "LARP_PRIOR_PRESETS", "LARP_VARIANTS"]
