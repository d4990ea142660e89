"""TiTok configuration and the table of released TiTok / TA-TiTok tokenizers."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_utils import VariantConfigMixin


# ViT sizes the original code names in `vit_enc_model_size` / `vit_dec_model_size`.
TITOK_VIT_PRESETS = {
    "small": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
}

_STAGE2 = {"quantize_mode": "vq", "token_size": 12, "codebook_size": 4096, "use_l2_norm": True, "is_legacy": True,
           "use_pixel_decoder": True}
_VQ8K = {"quantize_mode": "vq", "token_size": 64, "codebook_size": 8192, "use_l2_norm": False, "is_legacy": False,
         "use_pixel_decoder": False}
_VAE = {"quantize_mode": "vae", "token_size": 16, "codebook_size": None, "is_legacy": False, "use_pixel_decoder": False}
_TEXT = {"use_text_guidance": True, "text_context_length": 77, "text_embed_dim": 768}

# Released tokenizers (timm `default_cfgs` style): name -> original hub id, encoder/decoder preset, config fields.
TITOK_VARIANTS = {
    "titok_l32": {"hub_id": "yucornetto/tokenizer_titok_l32_imagenet", "encoder": "large", "decoder": "large",
                  "num_latent_tokens": 32, **_STAGE2},
    "titok_b64": {"hub_id": "yucornetto/tokenizer_titok_b64_imagenet", "encoder": "base", "decoder": "base",
                  "num_latent_tokens": 64, **_STAGE2},
    "titok_s128": {"hub_id": "yucornetto/tokenizer_titok_s128_imagenet", "encoder": "small", "decoder": "small",
                   "num_latent_tokens": 128, **_STAGE2},
    "titok_bl64_vq8k": {"hub_id": "yucornetto/tokenizer_titok_bl64_vq8k_imagenet", "encoder": "base",
                        "decoder": "large", "num_latent_tokens": 64, **_VQ8K},
    "titok_bl128_vq8k": {"hub_id": "yucornetto/tokenizer_titok_bl128_vq8k_imagenet", "encoder": "base",
                         "decoder": "large", "num_latent_tokens": 128, **_VQ8K},
    "titok_sl256_vq8k": {"hub_id": "yucornetto/tokenizer_titok_sl256_vq8k_imagenet", "encoder": "small",
                         "decoder": "large", "num_latent_tokens": 256, **_VQ8K},
    "titok_ll32_vae": {"hub_id": "yucornetto/tokenizer_titok_ll32_vae_c16_imagenet", "encoder": "large",
                       "decoder": "large", "num_latent_tokens": 32, **_VAE},
    "titok_bl64_vae": {"hub_id": "yucornetto/tokenizer_titok_bl64_vae_c16_imagenet", "encoder": "base",
                       "decoder": "large", "num_latent_tokens": 64, **_VAE},
    "titok_bl128_vae": {"hub_id": "yucornetto/tokenizer_titok_bl128_vae_c16_imagenet", "encoder": "base",
                        "decoder": "large", "num_latent_tokens": 128, **_VAE},
    "tatitok_bl32_vq": {"hub_id": "turkeyju/tokenizer_tatitok_bl32_vq", "encoder": "base", "decoder": "large",
                        "num_latent_tokens": 32, **_VQ8K, **_TEXT},
    "tatitok_bl64_vq": {"hub_id": "turkeyju/tokenizer_tatitok_bl64_vq", "encoder": "base", "decoder": "large",
                        "num_latent_tokens": 64, **_VQ8K, **_TEXT},
    "tatitok_bl128_vq": {"hub_id": "turkeyju/tokenizer_tatitok_bl128_vq", "encoder": "base", "decoder": "large",
                         "num_latent_tokens": 128, **_VQ8K, **_TEXT},
    "tatitok_bl32_vae": {"hub_id": "turkeyju/tokenizer_tatitok_bl32_vae", "encoder": "base", "decoder": "large",
                         "num_latent_tokens": 32, **_VAE, **_TEXT},
    "tatitok_bl64_vae": {"hub_id": "turkeyju/tokenizer_tatitok_bl64_vae", "encoder": "base", "decoder": "large",
                         "num_latent_tokens": 64, **_VAE, **_TEXT},
    "tatitok_sl128_vae": {"hub_id": "turkeyju/tokenizer_tatitok_sl128_vae", "encoder": "small", "decoder": "large",
                          "num_latent_tokens": 128, **_VAE, **_TEXT},
}


@strict
class TiTokConfig(VariantConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a TiTok 1D image tokenizer (Yu et al., 2024, arXiv:2406.07550) and its variants: two-stage VQ
    (MaskGIT-VQGAN pixel decoder), single-stage VQ8k, VAE and text-aware TA-TiTok (arXiv:2501.07730).

    Args:
        image_size (`int`): side of the square input images (256 for every release).
        num_channels (`int`): image channels.
        patch_size (`int`): encoder patch size. decoder_patch_size (`int`): decoder patch size.
        num_latent_tokens (`int`): number of 1D tokens per image.
        token_size (`int`): dimension of a token (codebook vector / VAE latent).
        quantize_mode (`str`): `"vq"` (discrete ids) or `"vae"` (continuous diagonal-Gaussian tokens).
        codebook_size (`int`, *optional*): VQ vocabulary size; `None` for VAE tokenizers.
        use_l2_norm (`bool`): l2-normalise latents and codebook before the nearest-neighbour search.
        commitment_cost (`float`): weight of the VQ commitment loss (training).
        encoder_hidden_size / encoder_num_hidden_layers / encoder_num_attention_heads (`int`): encoder ViT size.
        decoder_hidden_size / decoder_num_hidden_layers / decoder_num_attention_heads (`int`): decoder ViT size.
        mlp_ratio (`float`): MLP width over hidden size. hidden_act (`str`): MLP activation.
        layer_norm_eps (`float`): epsilon of every LayerNorm.
        is_legacy (`bool`): layout of the released two-stage models: the encoder's raw `[B, W, N]` reinterpretation
            of its output tokens and a decoder head predicting `proxy_codebook_size` MaskGIT-VQGAN code logits instead
            of pixels.
        use_pixel_decoder (`bool`): decode the proxy-code logits with the built-in MaskGIT-VQGAN pixel decoder
            (a softmax-weighted mixture of its codebook); required with `is_legacy`.
        proxy_codebook_size (`int`): number of MaskGIT-VQGAN codes predicted by the legacy head.
        pixel_decoder_hidden_channels / pixel_decoder_channel_mult / pixel_decoder_num_res_blocks /
        pixel_decoder_z_channels: MaskGIT-VQGAN decoder sizes (release: 128, [1, 1, 2, 2, 4], 2, 256).
        use_text_guidance (`bool`): TA-TiTok: the decoder also attends to projected text embeddings.
        text_context_length (`int`), text_embed_dim (`int`): shape of the text guidance (CLIP ViT-L/14-336: 77, 768).
        attention_dropout (`float`), initializer_range (`float`): training settings.
    """

    model_type = "titok"
    variants = TITOK_VARIANTS

    image_size: int = 256
    num_channels: int = 3
    patch_size: int = 16
    decoder_patch_size: int = 16
    num_latent_tokens: int = 32
    token_size: int = 12
    quantize_mode: str = "vq"
    codebook_size: int | None = 4096
    use_l2_norm: bool = True
    commitment_cost: float = 0.25
    encoder_hidden_size: int = 1024
    encoder_num_hidden_layers: int = 24
    encoder_num_attention_heads: int = 16
    decoder_hidden_size: int = 1024
    decoder_num_hidden_layers: int = 24
    decoder_num_attention_heads: int = 16
    mlp_ratio: float = 4.0
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    is_legacy: bool = True
    use_pixel_decoder: bool = True
    proxy_codebook_size: int = 1024
    pixel_decoder_hidden_channels: int = 128
    pixel_decoder_channel_mult: list[int] | None = None
    pixel_decoder_num_res_blocks: int = 2
    pixel_decoder_z_channels: int = 256
    use_text_guidance: bool = False
    text_context_length: int = 77
    text_embed_dim: int = 768
    attention_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.pixel_decoder_channel_mult is None:
            self.pixel_decoder_channel_mult = [1, 1, 2, 2, 4]
        self.pixel_decoder_channel_mult = list(self.pixel_decoder_channel_mult)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        if self.quantize_mode not in ("vq", "vae"):
            raise ValueError(f"quantize_mode must be 'vq' or 'vae', got {self.quantize_mode!r}.")
        if self.quantize_mode == "vq" and not self.codebook_size:
            raise ValueError("quantize_mode='vq' needs a codebook_size.")
        if self.quantize_mode == "vae" and self.codebook_size is not None:
            raise ValueError("VAE TiTok has no codebook: set codebook_size=None.")
        for name, patch in (("patch_size", self.patch_size), ("decoder_patch_size", self.decoder_patch_size)):
            if self.image_size % patch != 0:
                raise ValueError(f"image_size ({self.image_size}) must be divisible by {name} ({patch}).")
        if self.is_legacy and not self.use_pixel_decoder:
            raise ValueError(
                "is_legacy=True predicts MaskGIT-VQGAN proxy codes and needs use_pixel_decoder=True to reach pixels."
            )
        if self.use_pixel_decoder and not self.is_legacy:
            raise ValueError("use_pixel_decoder=True only applies to the legacy (proxy-code) decoder head.")
        if self.use_pixel_decoder:
            upsampling = 2 ** (len(self.pixel_decoder_channel_mult) - 1)
            if upsampling != self.decoder_patch_size:
                raise ValueError(
                    f"the pixel decoder upsamples by {upsampling} (2**(len(pixel_decoder_channel_mult)-1)) but "
                    f"decoder_patch_size is {self.decoder_patch_size}; they must be equal."
                )

    @classmethod
    def variant_fields(cls, variant: dict) -> dict:
        """A `TITOK_VARIANTS` entry names its encoder/decoder ViT presets; they become the size fields."""
        variant = super().variant_fields(variant)
        encoder, decoder = TITOK_VIT_PRESETS[variant.pop("encoder")], TITOK_VIT_PRESETS[variant.pop("decoder")]
        fields = {f"encoder_{k}": v for k, v in encoder.items()} | {f"decoder_{k}": v for k, v in decoder.items()}
        return fields | variant
