from testers import TokenizerTester

from vistok import MAETokConfig, MAETokImageProcessor, MAETokModel


# the released layout (mask token for training, no auxiliary decoders), tiny
_BASE = dict(
    image_size=32, patch_size=8, decoder_patch_size=8, num_latent_tokens=8, latent_dim=8,
    encoder_hidden_size=32, encoder_num_hidden_layers=2, encoder_num_attention_heads=2,
    decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
)

TESTERS = [
    TokenizerTester(
        name="maetok",
        config_class=MAETokConfig, model_class=MAETokModel, image_processor_class=MAETokImageProcessor,
        config_kwargs=_BASE | dict(vq_mean=0.1, vq_std=0.5),
        input_shape=(3, 32, 32), input_range=(-1.0, 1.0), num_tokens=8, discrete=False,
    ),
    # training layout with the HOG auxiliary decoder (its targets are computed in the package) and class tokens
    TokenizerTester(
        name="maetok-hog",
        config_class=MAETokConfig, model_class=MAETokModel, image_processor_class=MAETokImageProcessor,
        config_kwargs=_BASE | dict(
            use_hog_decoder=True, hog_cell_size=4, hog_feature_dim=108, decoder_use_class_token=True,
            aux_hidden_size=16, aux_num_hidden_layers=1, aux_num_attention_heads=1,
        ),
        input_shape=(3, 32, 32), input_range=(-1.0, 1.0), num_tokens=8, discrete=False,
    ),
    # odd encoder grid (40 / 8 = 5) and a pixel decoder with a smaller patch than the encoder (40 / 4 = 10)
    TokenizerTester(
        name="maetok-odd-unequal-patch",
        config_class=MAETokConfig, model_class=MAETokModel, image_processor_class=MAETokImageProcessor,
        config_kwargs=_BASE | dict(image_size=40, patch_size=8, decoder_patch_size=4, num_latent_tokens=7, latent_dim=12,
                                   decoder_hidden_size=24, decoder_num_attention_heads=2, vq_mean=-0.2, vq_std=1.5),
        input_shape=(3, 40, 40), input_range=(-1.0, 1.0), num_tokens=7, discrete=False,
    ),
]
