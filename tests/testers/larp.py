from testers import TokenizerTester

from vistok import LARPConfig, LARPModel, LARPVideoProcessor


# 8-frame 32x24 clips (non-square), 4x8x8 patches, 16 holistic queries; with and without the AR prior
_BASE = dict(
    image_size=[32, 24], num_frames=8, patch_size=8, temporal_patch_size=4, decoder_patch_size=8,
    decoder_temporal_patch_size=4, num_latent_tokens=16, encoder_hidden_size=32, encoder_num_hidden_layers=2,
    encoder_num_attention_heads=2, decoder_hidden_size=32, decoder_num_hidden_layers=2,
    decoder_num_attention_heads=2, bottleneck_dim=8, codebook_size=64,
)
_PROCESSOR = dict(num_frames=8, size={"shortest_edge": 24}, crop_size={"height": 32, "width": 24})

TESTERS = [
    TokenizerTester(
        name=name, modality="video", config_class=LARPConfig, model_class=LARPModel,
        video_processor_class=LARPVideoProcessor, processor_kwargs=_PROCESSOR, config_kwargs=_BASE | extra,
        input_shape=(8, 3, 32, 24), num_tokens=16, bad_num_frames=(9, 6, 12),
    )
    for name, extra in (
        ("larp", {}),
        ("larp-prior", dict(prior_hidden_size=32, prior_num_hidden_layers=1, prior_num_attention_heads=2)),
    )
]
