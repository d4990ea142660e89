from testers import TokenizerTester

import torch

from vistok import TiTokConfig, TiTokImageProcessor, TiTokModel


_BASE = dict(
    image_size=32, patch_size=8, decoder_patch_size=8, num_latent_tokens=8, token_size=12,
    encoder_hidden_size=64, encoder_num_hidden_layers=2, encoder_num_attention_heads=4,
    decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
)

TESTERS = [
    TokenizerTester(
        name="titok-legacy-vq",
        config_class=TiTokConfig, model_class=TiTokModel, image_processor_class=TiTokImageProcessor,
        config_kwargs=_BASE | dict(
            codebook_size=64, use_l2_norm=True, is_legacy=True, use_pixel_decoder=True, proxy_codebook_size=64,
            pixel_decoder_hidden_channels=32, pixel_decoder_channel_mult=[1, 1, 1, 2], pixel_decoder_num_res_blocks=1,
            pixel_decoder_z_channels=32,
        ),
        input_shape=(3, 32, 32), num_tokens=8,
    ),
    TokenizerTester(
        name="titok-vq",
        config_class=TiTokConfig, model_class=TiTokModel, image_processor_class=TiTokImageProcessor,
        config_kwargs=_BASE | dict(codebook_size=64, use_l2_norm=False, is_legacy=False, use_pixel_decoder=False),
        input_shape=(3, 32, 32), num_tokens=8,
    ),
    TokenizerTester(
        name="titok-vae",
        config_class=TiTokConfig, model_class=TiTokModel, image_processor_class=TiTokImageProcessor,
        config_kwargs=_BASE | dict(quantize_mode="vae", codebook_size=None, is_legacy=False, use_pixel_decoder=False),
        input_shape=(3, 32, 32), num_tokens=8, discrete=False,
    ),
    TokenizerTester(
        name="tatitok-vq",
        config_class=TiTokConfig, model_class=TiTokModel, image_processor_class=TiTokImageProcessor,
        config_kwargs=_BASE | dict(codebook_size=64, is_legacy=False, use_pixel_decoder=False, use_l2_norm=False,
                                   use_text_guidance=True, text_context_length=5, text_embed_dim=16),
        input_shape=(3, 32, 32), num_tokens=8,
        make_decode_kwargs=lambda batch_size: {
            "text_guidance": torch.randn(batch_size, 5, 16, generator=torch.Generator().manual_seed(7))
        },
    ),
    # odd sizes everywhere: 40 px -> 5x5 grid, 7 tokens of 5 channels, 3 heads
    TokenizerTester(
        name="titok-vq-odd",
        config_class=TiTokConfig, model_class=TiTokModel, image_processor_class=TiTokImageProcessor,
        config_kwargs=_BASE | dict(image_size=40, num_latent_tokens=7, token_size=5, codebook_size=37,
                                   encoder_hidden_size=48, encoder_num_attention_heads=3, commitment_cost=0.4,
                                   use_l2_norm=False, is_legacy=False, use_pixel_decoder=False),
        input_shape=(3, 40, 40), num_tokens=7,
    ),
]
