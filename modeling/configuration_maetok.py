"""MAETok configuration and the table of released MAETok tokenizers."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_utils import VariantConfigMixin


# timm registry names the original `ModelArgs` uses for its ViTs (tags such as `.lvd142m` stripped). Hidden size and
# depth are read from the weights at conversion time; the head count is not, so it comes from here.
MAETOK_VIT_PRESETS = {
    "vit_small_patch14_dinov2": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "vit_base_patch14_dinov2": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "vit_large_patch14_dinov2": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    "vit_small_patch14_dinov2_movqv2": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "vit_base_patch14_dinov2_movqv2": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "vit_tinytiny_patch14_dinov2_movq2": {"hidden_size": 192, "num_hidden_layers": 3, "num_attention_heads": 3},
}

_BASE_128 = {
    "num_latent_tokens": 128, "latent_dim": 32, "patch_size": 16, "decoder_patch_size": 16,
    "encoder_hidden_size": 768, "encoder_num_hidden_layers": 12, "encoder_num_attention_heads": 12,
    "decoder_hidden_size": 768, "decoder_num_hidden_layers": 12, "decoder_num_attention_heads": 12,
}

# Released tokenizers (timm `default_cfgs` style): name -> original hub id and config fields. `vq_mean`/`vq_std` of
# the releases live in their hub `config.json` and are carried over by `vistok-convert maetok`.
MAETOK_VARIANTS = {
    "maetok-b-128": {"hub_id": "MAETok/maetok-b-128", "image_size": 256, **_BASE_128},
    "maetok-b-128-512": {"hub_id": "MAETok/maetok-b-128-512", "image_size": 512, **_BASE_128},
}

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@strict
class MAETokConfig(VariantConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a MAETok 1D image tokenizer (Chen et al., 2025, "Masked Autoencoders Are Effective Tokenizers for
    Diffusion Models", arXiv:2502.03444): a ViT encoder that appends `num_latent_tokens` learned tokens to the image
    patches and outputs them as continuous latents, and a ViT decoder that rebuilds the pixels from mask tokens
    conditioned on those latents. Both use learned mixed 2D RoPE on the patch tokens; the encoder also adds a learned
    absolute position table. Training adds mask modelling and optional auxiliary shallow decoders (HOG, DINOv2 and
    SigLIP features).

    Args:
        image_size (`int`): side of the square input images (256 or 512 for the releases).
        num_channels (`int`): image channels.
        patch_size (`int`): encoder patch size. decoder_patch_size (`int`): pixel decoder patch size.
        num_latent_tokens (`int`): number of 1D latent tokens per image.
        latent_dim (`int`): channels of a latent token (`codebook_embed_dim` in the original code).
        encoder_hidden_size / encoder_num_hidden_layers / encoder_num_attention_heads (`int`): encoder ViT size.
        decoder_hidden_size / decoder_num_hidden_layers / decoder_num_attention_heads (`int`): pixel decoder size.
        decoder_use_class_token (`bool`): the pixel decoder prepends a learned class token (False for the releases).
        mlp_ratio (`float`): MLP width over hidden size. hidden_act (`str`): MLP activation.
        layer_norm_eps (`float`): epsilon of every LayerNorm.
        layer_scale_init (`float`): initial LayerScale value of the encoder layers.
        rope_theta (`float`): base of the initial mixed-RoPE frequencies (they are learned afterwards).
        vq_mean / vq_std (`float`): latent statistics used to normalise latents for diffusion models:
            `normalized = (latents - vq_mean) / vq_std`.
        mask_ratio_min / mask_ratio_max (`float`): range of the fraction of patch tokens replaced by the encoder's
            mask token in training (`enc_token_drop` / `enc_token_drop_max`); `mask_ratio_max=0` disables masking
            and removes the mask token. mask_ratio_std (`float`): scale of the truncated normal the ratio is drawn
            from (peaked at `mask_ratio_max`).
        use_hog_decoder / use_dino_decoder / use_siglip_decoder (`bool`): build the auxiliary shallow decoders that
            predict HOG, DINOv2 and SigLIP features of the masked patches (training only).
        aux_hidden_size / aux_num_hidden_layers / aux_num_attention_heads (`int`): size of each auxiliary decoder.
        aux_use_class_token (`bool`): the auxiliary decoders prepend a learned class token.
        aux_feature_patch_size (`int`): patch size of the DINOv2/SigLIP feature grids (`repa_patch_size`).
        aux_loss_on_masked_only (`bool`): auxiliary losses only on the masked patches (`aux_loss_mask`).
        hog_feature_dim (`int`): HOG features per decoder patch (`3 * hog_num_bins * (patch / hog_cell_size)**2`).
        hog_num_bins / hog_cell_size / hog_gaussian_window (`int`): HOG orientation bins, cell side in pixels and
            Gaussian weighting window.
        dino_feature_dim / siglip_feature_dim (`int`): channels of the DINOv2 / SigLIP teacher features.
        teacher_image_mean / teacher_image_std (`list[float]`): normalisation of the images fed to the teachers
            (ImageNet statistics for both, as in the original training code).
        reconstruction_loss_weight / hog_loss_weight / dino_loss_weight / siglip_loss_weight (`float`): loss weights.
        train_decoder_only (`bool`): decoder fine-tuning stage: the encoder is frozen, no masking, no auxiliary
            losses.
        attention_dropout (`float`), initializer_range (`float`): training settings.
    """

    model_type = "maetok"
    variants = MAETOK_VARIANTS

    image_size: int = 256
    num_channels: int = 3
    patch_size: int = 16
    decoder_patch_size: int = 16
    num_latent_tokens: int = 128
    latent_dim: int = 32
    encoder_hidden_size: int = 768
    encoder_num_hidden_layers: int = 12
    encoder_num_attention_heads: int = 12
    decoder_hidden_size: int = 768
    decoder_num_hidden_layers: int = 12
    decoder_num_attention_heads: int = 12
    decoder_use_class_token: bool = False
    mlp_ratio: float = 4.0
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    layer_scale_init: float = 1e-5
    rope_theta: float = 10.0
    vq_mean: float = 0.0
    vq_std: float = 1.0
    mask_ratio_min: float = 0.4
    mask_ratio_max: float = 0.6
    mask_ratio_std: float = 0.25
    use_hog_decoder: bool = False
    use_dino_decoder: bool = False
    use_siglip_decoder: bool = False
    aux_hidden_size: int = 192
    aux_num_hidden_layers: int = 3
    aux_num_attention_heads: int = 3
    aux_use_class_token: bool = True
    aux_feature_patch_size: int = 16
    aux_loss_on_masked_only: bool = True
    hog_feature_dim: int = 108
    hog_num_bins: int = 9
    hog_cell_size: int = 8
    hog_gaussian_window: int = 16
    dino_feature_dim: int = 1024
    siglip_feature_dim: int = 1152
    teacher_image_mean: list[float] | None = None
    teacher_image_std: list[float] | None = None
    reconstruction_loss_weight: float = 1.0
    hog_loss_weight: float = 1.0
    dino_loss_weight: float = 1.0
    siglip_loss_weight: float = 1.0
    train_decoder_only: bool = False
    attention_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.teacher_image_mean = list(IMAGENET_MEAN if self.teacher_image_mean is None else self.teacher_image_mean)
        self.teacher_image_std = list(IMAGENET_STD if self.teacher_image_std is None else self.teacher_image_std)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        patches = [("patch_size", self.patch_size), ("decoder_patch_size", self.decoder_patch_size)]
        if self.use_dino_decoder or self.use_siglip_decoder:
            patches.append(("aux_feature_patch_size", self.aux_feature_patch_size))
        for name, patch in patches:
            if patch <= 0 or self.image_size % patch != 0:
                raise ValueError(f"image_size ({self.image_size}) must be divisible by {name} ({patch}).")
        for prefix, hidden, heads in (
            ("encoder", self.encoder_hidden_size, self.encoder_num_attention_heads),
            ("decoder", self.decoder_hidden_size, self.decoder_num_attention_heads),
            ("aux", self.aux_hidden_size, self.aux_num_attention_heads),
        ):
            if hidden % heads != 0 or (hidden // heads) % 4 != 0:
                raise ValueError(
                    f"{prefix}_hidden_size ({hidden}) must be divisible by {prefix}_num_attention_heads ({heads}) "
                    "with a head dimension divisible by 4 (mixed 2D RoPE rotates pairs along two axes)."
                )
        if not 0.0 <= self.mask_ratio_min <= self.mask_ratio_max < 1.0:
            raise ValueError(
                f"mask ratios must satisfy 0 <= mask_ratio_min <= mask_ratio_max < 1, got {self.mask_ratio_min} and "
                f"{self.mask_ratio_max}."
            )
        if self.vq_std <= 0:
            raise ValueError(f"vq_std must be positive, got {self.vq_std}.")
        if len(self.teacher_image_mean) != self.num_channels or len(self.teacher_image_std) != self.num_channels:
            raise ValueError(
                f"teacher_image_mean/std must have {self.num_channels} values, got {self.teacher_image_mean} and "
                f"{self.teacher_image_std}."
            )
