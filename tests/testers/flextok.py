from testers import TokenizerTester

import torch

from vistok import FlexTokConfig, FlexTokImageProcessor, FlexTokModel


# a 3-level f4 diffusers AutoencoderKL: 32x32 images -> 4x8x8 latents -> 4x4 patches of 2x2
TINY_VAE = {
    "block_out_channels": [16, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "latent_channels": 4,
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "act_fn": "silu",
}

TINY_FLEXTOK = dict(
    image_size=32, vae_config=TINY_VAE, vae_scaling_factor=0.8, patch_size=2, num_latent_tokens=8,
    fsq_levels=[8, 5, 5, 5], encoder_hidden_size=32, encoder_num_hidden_layers=2, encoder_num_attention_heads=2,
    decoder_hidden_size=48, decoder_num_hidden_layers=2, decoder_num_attention_heads=3,
    # two Euler steps with APG: both guidance branches and the momentum are exercised
    num_inference_steps=2, guidance_scale=2.0, guidance_type="apg", initializer_range=0.1,
)


def flextok_decode_kwargs(batch_size: int) -> dict:
    # a fresh generator per call: decodes draw the same noise, training steps the same t / noise / kept registers
    return {"generator": torch.Generator().manual_seed(0)}


TESTERS = [
    TokenizerTester(
        name="flextok",
        config_class=FlexTokConfig, model_class=FlexTokModel, image_processor_class=FlexTokImageProcessor,
        config_kwargs=TINY_FLEXTOK, input_shape=(3, 32, 32), input_range=(-1.0, 1.0), num_tokens=8,
        make_decode_kwargs=flextok_decode_kwargs,
    ),
    # 40 px -> 10x10 VAE latents -> an odd 5x5 grid of 2x2 patches; odd FSQ levels
    TokenizerTester(
        name="flextok-odd",
        config_class=FlexTokConfig, model_class=FlexTokModel, image_processor_class=FlexTokImageProcessor,
        config_kwargs=TINY_FLEXTOK | dict(image_size=40, vae_config=TINY_VAE | {"sample_size": 40}, fsq_levels=[7, 5, 3],
                                          num_latent_tokens=4),
        input_shape=(3, 40, 40), input_range=(-1.0, 1.0), num_tokens=4, make_decode_kwargs=flextok_decode_kwargs,
    ),
]
