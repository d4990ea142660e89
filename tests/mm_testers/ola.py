"""Tiny Ola models (vistok's `ola` classes): OryxViT with 16 px patches and a 4x4 position grid, one-layer Whisper and
BEATs encoders, a Qwen2 LLM; the processor's image / video sizes are shrunk so the views stay a few patches wide."""

import numpy as np

from vistok.modeling.configuration_ola import OlaConfig
from vistok.modeling.modeling_ola import OlaForConditionalGeneration
from vistok.processing.feature_extraction_ola import OlaFeatureExtractor
from vistok.processing.image_processing_ola import OlaImageProcessor
from vistok.processing.processing_ola import OLA_CHAT_TEMPLATE, OlaProcessor

from . import MultimodalTester, make_tiny_tokenizer


SPECIAL_TOKENS = {"image_token": "<image>", "audio_token": "<speech>", "video_token": "<video>"}


class OlaTester(MultimodalTester):
    name = "ola"
    model_class = OlaForConditionalGeneration
    supports_video = True
    supports_audio = True
    lora_parts = ("llm", "vision", "projector")

    def get_config(self):
        tokenizer = make_tiny_tokenizer(SPECIAL_TOKENS)
        return OlaConfig(
            vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                           "intermediate_size": 64, "position_grid_size": 4},
            audio_config={"model_type": "whisper", "d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2,
                          "encoder_ffn_dim": 32, "num_mel_bins": 128, "decoder_layers": 1,
                          "decoder_attention_heads": 2, "decoder_ffn_dim": 32, "vocab_size": 64, "pad_token_id": 0,
                          "bos_token_id": 1, "eos_token_id": 1, "decoder_start_token_id": 2},
            beats_config={"patch_embedding_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
                          "num_attention_heads": 2, "intermediate_size": 32, "conv_pos": 16, "conv_pos_groups": 4},
            text_config={
                "model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": 48, "intermediate_size": 96,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 2048, "pad_token_id": tokenizer.pad_token_id,
                "eos_token_id": tokenizer.eos_token_id,
            },
            audio_projector_hidden_size=24,
            image_token_id=tokenizer.image_token_id,
            audio_token_id=tokenizer.audio_token_id,
            video_token_id=tokenizer.video_token_id,
        )

    def get_processor(self):
        image_processor = OlaImageProcessor(lowres_size=48, max_resolution=96, video_stride=32,
                                            video_max_resolution=64, video_min_resolution=32)
        return OlaProcessor(
            image_processor=image_processor, feature_extractor=OlaFeatureExtractor(max_chunks=3),
            tokenizer=make_tiny_tokenizer(SPECIAL_TOKENS), chat_template=OLA_CHAT_TEMPLATE,
            audio_token=SPECIAL_TOKENS["audio_token"],
        )

    def make_audio(self, seed: int = 0) -> np.ndarray:
        """1.5 s of a 440 Hz tone plus noise, 16 kHz mono float32."""
        rng = np.random.default_rng(seed)
        t = np.arange(24000) / 16000
        return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


TESTERS = [OlaTester()]
