import torch
from testers import TokenizerTester
from transformers import Emu3VQVAEConfig

from vistok import Emu3VideoProcessor, Emu3VisionTokenizer, Emu3VisionTokenizerImageProcessor


# spatial factor 2, 64 codes; non-square 16x24 inputs; the processors resize to that fixed size
_CONFIG = dict(
    codebook_size=64, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 2], num_res_blocks=1,
    attn_resolutions=[1], hidden_size=64,
)
_PROCESSOR = dict(spatial_factor=2, size={"height": 16, "width": 24})
# one model takes images [B, C, H, W] and videos [B, T, C, H, W] of any size >= 2 (the grid floors odd sides, as the
# original does; a side of 1 is refused) and grids of any size:
# a grid with one more column, or a clip / grid without its batch dimension, is a valid input
_COMMON = dict(
    config_class=Emu3VQVAEConfig, model_class=Emu3VisionTokenizer, config_kwargs=_CONFIG, input_range=(-1.0, 1.0),
    variable_token_grid=True, bad_spatial_size=(1, 24),
)


class Emu3TokenizerTester(TokenizerTester):
    """Scales the random decoder output to a std of ~0.2 (the parity fixture rescales it too): transformers' init
    gives reconstructions of std ~2, mostly clipped per-pixel noise, which no lossy video codec (the pipeline's mp4
    writer, 4:2:0 chroma) keeps."""

    def make_model(self, seed: int = 0, **overrides):
        model = super().make_model(seed, **overrides)
        with torch.no_grad():
            model.decoder.conv_out.weight.mul_(0.1)
            model.decoder.conv_out.bias.mul_(0.1)
        return model


TESTERS = [
    Emu3TokenizerTester(
        name="emu3-image", modality="image", image_processor_class=Emu3VisionTokenizerImageProcessor,
        processor_kwargs=_PROCESSOR, input_shape=(3, 16, 24), token_shape=(8, 12), latent_shape=(4, 8, 12),
        token_layout="[batch, height, width]", latent_layout="[batch, embed_dim, height, width]", **_COMMON,
    ),
    Emu3TokenizerTester(
        name="emu3-video", modality="video", video_processor_class=Emu3VideoProcessor,
        processor_kwargs=_PROCESSOR | dict(do_sample_frames=True, num_frames=8), input_shape=(8, 3, 16, 24),
        token_shape=(2, 8, 12), latent_shape=(2, 4, 8, 12), token_layout="[batch, frames, height, width]",
        latent_layout="[batch, frames, embed_dim, height, width]", accepts_images=True, bad_num_frames=(3, 2, 1),
        **_COMMON,
    ),
]
