"""FlexTok configuration and the table of released FlexTok tokenizers and VAEs."""

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_utils import VariantConfigMixin


# The SDXL-like diffusers `AutoencoderKL` that every FlexTok VAE uses (f8); `latent_channels` picks c4/c8/c16.
FLEXTOK_VAE_BASE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 1.0,
}

# Released VAEs (plain diffusers `AutoencoderKL` repos, loadable with diffusers directly): name -> hub id, channels.
FLEXTOK_VAE_VARIANTS = {
    "flextok_vae_c4": {"hub_id": "EPFL-VILAB/flextok_vae_c4", "latent_channels": 4},
    "flextok_vae_c8": {"hub_id": "EPFL-VILAB/flextok_vae_c8", "latent_channels": 8},
    "flextok_vae_c16": {"hub_id": "EPFL-VILAB/flextok_vae_c16", "latent_channels": 16},
}

# Released tokenizers: width = 64 x depth, head_dim 64, 256 registers, FSQ [8, 8, 8, 5, 5, 5], VAE c16, 256x256.
FLEXTOK_VARIANTS = {
    "flextok_d12_d12_in1k": {"hub_id": "EPFL-VILAB/flextok_d12_d12_in1k", "encoder_depth": 12, "decoder_depth": 12},
    "flextok_d18_d18_in1k": {"hub_id": "EPFL-VILAB/flextok_d18_d18_in1k", "encoder_depth": 18, "decoder_depth": 18},
    "flextok_d18_d28_in1k": {"hub_id": "EPFL-VILAB/flextok_d18_d28_in1k", "encoder_depth": 18, "decoder_depth": 28},
    "flextok_d18_d28_dfn": {"hub_id": "EPFL-VILAB/flextok_d18_d28_dfn", "encoder_depth": 18, "decoder_depth": 28},
}

GUIDANCE_TYPES = ("cfg", "apg")


def gated_mlp_size(hidden_size: int, mlp_ratio: float) -> int:
    """Hidden width of FlexTok's SwiGLU MLP: 2/3 of `mlp_ratio * hidden_size` (768 -> 2048, 1792 -> 4778)."""
    return int(2 * int(hidden_size * mlp_ratio) / 3)


@strict
class FlexTokConfig(VariantConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a FlexTok tokenizer (Bachmann et al., 2025, arXiv:2502.13967): a frozen diffusers `AutoencoderKL`
    VAE, a ViT encoder that resamples the VAE latent patches into `num_latent_tokens` register tokens under a causal
    register mask, FSQ on the registers, and a rectified-flow ViT decoder that denoises VAE latents conditioned on any
    prefix of the register tokens (nested dropout fills the rest with a learned mask token).

    Args:
        image_size (`int` or `[height, width]`): size of the input images its position tables are made for (256,
            i.e. 256x256, for every release; a pair when the tables are not square). Smaller images work too, see
            `FlexTokModel.validate_input_size`.
        num_channels (`int`): image channels.
        vae_config (`dict`, *optional*): diffusers `AutoencoderKL` config (without the `_class_name` bookkeeping
            keys); defaults to `FLEXTOK_VAE_BASE_CONFIG`, the released c16 VAE.
        vae_scaling_factor (`float`): FlexTok's own latent scale; it replaces the VAE config's `scaling_factor`
            (0.88 for the releases).
        vae_sample_posterior (`bool`): default of `encode(sample_posterior=...)`: sample the VAE posterior instead of
            taking its mode. The original release samples; the default here is the deterministic mode.
        patch_size (`int`): side of the square patches of the VAE latent (2 for the releases: 16x16 patches).
        num_latent_tokens (`int`): number of register tokens, i.e. the maximum number of tokens per image.
        fsq_levels (`list[int]`): FSQ levels per channel (release: `[8, 8, 8, 5, 5, 5]`).
        codebook_size (`int`, *optional*): vocabulary size; always the product of `fsq_levels` (filled in if None).
        encoder_hidden_size / encoder_num_hidden_layers / encoder_num_attention_heads (`int`): encoder ViT size.
        encoder_intermediate_size (`int`, *optional*): SwiGLU width; defaults to `gated_mlp_size(hidden, mlp_ratio)`.
        decoder_hidden_size / decoder_num_hidden_layers / decoder_num_attention_heads (`int`): decoder ViT size.
        decoder_intermediate_size (`int`, *optional*): decoder SwiGLU width, same default rule.
        mlp_ratio (`float`): MLP ratio before the 2/3 SwiGLU correction. hidden_act (`str`): gate activation.
        layer_norm_eps (`float`): epsilon of every (parameter-free) LayerNorm.
        attention_scale_multiplier (`float`): softmax scale is `attention_scale_multiplier / head_dim` (muP; equals
            `head_dim ** -0.5` for head_dim 64).
        timestep_embedding_dim (`int`): size of the sinusoidal timestep features (cos first, then sin).
        timestep_max_period (`float`): max period of those features (256 in FlexTok, not 10000).
        max_timestep (`float`): flow time range [0, max_timestep]; features use `t * 1000 / max_timestep`.
        adaln_expansion (`int`): 2 = separate adaLN modulation for patch tokens (first half) and register tokens
            (second half); 1 = shared.
        null_condition (`str`): CFG null condition replacing every register: `"learned"` (a learned vector) or
            `"zeros"`.
        repa_layer_index (`int`, *optional*): decoder block whose patch features `predict_velocity` can return
            (REPA alignment during training).
        nested_dropout_mode (`str`): training-time sampling of the number of kept registers: `"uniform"` (1..N),
            `"pow2"` (powers of two up to N) or `"uniform_pow2"` (uniform, rounded up to a power of two).
        cfg_dropout_prob (`float`): training-time probability of replacing an image's registers by the null condition.
        training_timestep_sampling (`str`): `"uniform"` or `"logit_normal"` flow times in training.
        num_inference_steps (`int`), guidance_scale (`float`), guidance_type (`str`): decode defaults (Euler steps,
            guidance scale where 1.0 disables guidance, `"cfg"` or `"apg"`); README recommendation: 20, 7.5, APG.
        apg_momentum (`float`), apg_norm_threshold (`float`), apg_eta (`float`): adaptive projected guidance
            (arXiv:2410.02416) settings of the release: -0.5, 2.5, 0.0.
        attention_dropout (`float`), initializer_range (`float`): training settings.
    """

    model_type = "flextok"
    variants = FLEXTOK_VARIANTS

    image_size: int | list[int] = 256
    num_channels: int = 3
    vae_config: dict | None = None
    vae_scaling_factor: float = 0.88
    vae_sample_posterior: bool = False
    patch_size: int = 2
    num_latent_tokens: int = 256
    fsq_levels: list[int] | None = None
    codebook_size: int | None = None
    encoder_hidden_size: int = 768
    encoder_num_hidden_layers: int = 12
    encoder_num_attention_heads: int = 12
    encoder_intermediate_size: int | None = None
    decoder_hidden_size: int = 768
    decoder_num_hidden_layers: int = 12
    decoder_num_attention_heads: int = 12
    decoder_intermediate_size: int | None = None
    mlp_ratio: float = 4.0
    hidden_act: str = "silu"
    layer_norm_eps: float = 1e-5
    attention_scale_multiplier: float = 8.0
    timestep_embedding_dim: int = 256
    timestep_max_period: float = 256.0
    max_timestep: float = 1.0
    adaln_expansion: int = 2
    null_condition: str = "learned"
    repa_layer_index: int | None = 1
    nested_dropout_mode: str = "pow2"
    cfg_dropout_prob: float = 0.2
    training_timestep_sampling: str = "uniform"
    num_inference_steps: int = 20
    guidance_scale: float = 7.5
    guidance_type: str = "apg"
    apg_momentum: float = -0.5
    apg_norm_threshold: float = 2.5
    apg_eta: float = 0.0
    attention_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if isinstance(self.image_size, (list, tuple)):
            # a pair from a JSON file or a caller; one int when square, so square configs save as before
            if len(self.image_size) != 2:
                raise ValueError(f"image_size must be an int or a [height, width] pair, got {self.image_size!r}.")
            height, width = (int(side) for side in self.image_size)
            self.image_size = height if height == width else [height, width]
        vae_config = dict(FLEXTOK_VAE_BASE_CONFIG if self.vae_config is None else self.vae_config)
        self.vae_config = {k: v for k, v in vae_config.items() if not k.startswith("_")}
        if self.fsq_levels is None:
            self.fsq_levels = [8, 8, 8, 5, 5, 5]
        self.fsq_levels = [int(level) for level in self.fsq_levels]
        if self.codebook_size is None:
            self.codebook_size = math.prod(self.fsq_levels)
        if self.encoder_intermediate_size is None:
            self.encoder_intermediate_size = gated_mlp_size(self.encoder_hidden_size, self.mlp_ratio)
        if self.decoder_intermediate_size is None:
            self.decoder_intermediate_size = gated_mlp_size(self.decoder_hidden_size, self.mlp_ratio)
        super().__post_init__(**kwargs)

    @property
    def vae_downsample_factor(self) -> int:
        return 2 ** (len(self.vae_config.get("down_block_types", FLEXTOK_VAE_BASE_CONFIG["down_block_types"])) - 1)

    @property
    def vae_latent_channels(self) -> int:
        return int(self.vae_config.get("latent_channels", 4))

    @property
    def image_hw(self) -> tuple[int, int]:
        """`image_size` as (height, width)."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else (size[0], size[1])

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, columns) of the patch grid of the VAE latent, i.e. of the position tables ((16, 16) for the
        releases: 256 px / f8 VAE / patch 2)."""
        factor = self.vae_downsample_factor * self.patch_size
        return tuple(side // factor for side in self.image_hw)

    def validate_architecture(self):
        if any(level < 2 for level in self.fsq_levels):
            raise ValueError(f"every FSQ level must be >= 2, got {self.fsq_levels}.")
        if self.codebook_size != math.prod(self.fsq_levels):
            raise ValueError(
                f"codebook_size must be the product of fsq_levels {self.fsq_levels} ({math.prod(self.fsq_levels)}), "
                f"got {self.codebook_size}."
            )
        factor = self.vae_downsample_factor * self.patch_size
        if any(side <= 0 or side % factor for side in self.image_hw):
            raise ValueError(
                f"image_size ({self.image_size}) must be an int or a [height, width] pair of positive multiples of "
                f"the VAE downsampling ({self.vae_downsample_factor}) times patch_size ({self.patch_size}) = {factor}."
            )
        for key in ("in_channels", "out_channels"):
            if self.vae_config.get(key, 3) != self.num_channels:
                raise ValueError(
                    f"vae_config[{key!r}] ({self.vae_config.get(key)}) must equal num_channels ({self.num_channels})."
                )
        for name, hidden, heads in (
            ("encoder", self.encoder_hidden_size, self.encoder_num_attention_heads),
            ("decoder", self.decoder_hidden_size, self.decoder_num_attention_heads),
        ):
            if hidden % heads != 0:
                raise ValueError(
                    f"{name}_hidden_size ({hidden}) must be divisible by {name}_num_attention_heads ({heads})."
                )
        if self.adaln_expansion not in (1, 2):
            raise ValueError(
                f"adaln_expansion must be 1 (shared) or 2 (patches, registers), got {self.adaln_expansion}."
            )
        if self.null_condition not in ("learned", "zeros"):
            raise ValueError(f"null_condition must be 'learned' or 'zeros', got {self.null_condition!r}.")
        if self.nested_dropout_mode not in ("uniform", "pow2", "uniform_pow2"):
            raise ValueError(
                f"nested_dropout_mode must be 'uniform', 'pow2' or 'uniform_pow2', got {self.nested_dropout_mode!r}."
            )
        if self.training_timestep_sampling not in ("uniform", "logit_normal"):
            raise ValueError(
                "training_timestep_sampling must be 'uniform' or 'logit_normal', got "
                f"{self.training_timestep_sampling!r}."
            )
        if self.guidance_type not in GUIDANCE_TYPES:
            raise ValueError(f"guidance_type must be one of {GUIDANCE_TYPES}, got {self.guidance_type!r}.")
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}.")
        if self.repa_layer_index is not None and not 0 <= self.repa_layer_index < self.decoder_num_hidden_layers:
            raise ValueError(
                f"repa_layer_index must index a decoder layer (0..{self.decoder_num_hidden_layers - 1}), got "
                f"{self.repa_layer_index}."
            )

    @classmethod
    def variant_fields(cls, variant: dict) -> dict:
        """A `FLEXTOK_VARIANTS` entry gives depths; width is 64 per layer and there is one head per layer."""
        fields = {}
        for part in ("encoder", "decoder"):
            depth = variant[f"{part}_depth"]
            fields |= {
                f"{part}_hidden_size": 64 * depth,
                f"{part}_num_hidden_layers": depth,
                f"{part}_num_attention_heads": depth,
            }
        return fields


__all__ = ["FLEXTOK_VAE_BASE_CONFIG", "FLEXTOK_VAE_VARIANTS", "FLEXTOK_VARIANTS", "FlexTokConfig"]
