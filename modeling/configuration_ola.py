"""Ola configuration: OryxViT vision encoder, BEATs audio encoder, Whisper encoder and Qwen2 LLM as sub-configs."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.configuration_auto import AutoConfig


# Sizes the original code hard-codes (`SigLIP_MODEL_CONFIG["siglip_so400m_patch16_384"]`, `img_size=2048`); the head
# count is not in the weights.
ORYX_VIT_PRESETS = {
    "siglip_so400m_patch16_384": {"hidden_size": 1152, "num_hidden_layers": 27, "num_attention_heads": 16},
    "siglip_large_patch16_384": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
}

OLA_VARIANTS = {
    "ola_7b": {"hub_id": "THUdyh/Ola-7b", "speech_encoders_hub_id": "THUdyh/Ola_speech_encoders"},
}


@strict
class OryxViTConfig(PreTrainedConfig):
    r"""
    Configuration of OryxViT, the native-resolution SigLIP-so400m ViT of Oryx / Ola (no class token, no final norm).

    Args:
        hidden_size (`int`): width. num_hidden_layers (`int`): blocks. num_attention_heads (`int`): heads.
        intermediate_size (`int`): MLP width (`int(hidden_size * 3.7362)` in the release).
        patch_size (`int`): side of the square patches. num_channels (`int`): image channels.
        position_grid_size (`int`): side of the learned square position table (128 = 2048 px / 16 in the release);
            it is bilinearly resized (`align_corners=False`, no antialias) to every image's patch grid.
        hidden_act (`str`): MLP activation. layer_norm_eps (`float`): LayerNorm epsilon.
        attention_dropout (`float`): dropout on attention weights (training).
        initializer_range (`float`): std of the truncated-normal init.
    """

    model_type = "oryx_vit"
    base_config_key = "vision_config"

    hidden_size: int = 1152
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    intermediate_size: int = 4304
    patch_size: int = 16
    num_channels: int = 3
    position_grid_size: int = 128
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    initializer_range: float = 0.02


@strict
class BeatsConfig(PreTrainedConfig):
    r"""
    Configuration of a BEATs audio encoder (Chen et al., 2022, arXiv:2212.09058): 16x16 patches of a normalised Kaldi
    log-mel filterbank (computed by `OlaFeatureExtractor`), a convolutional position embedding and post-norm (DeepNorm) transformer layers with a gated
    relative position bias. Defaults: `BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2`.

    Args:
        num_mel_bins (`int`): filterbank bins (the patch grid has `num_mel_bins / patch_size` columns).
        patch_size (`int`): side of the square filterbank patches. patch_embedding_size (`int`): patch embedding width.
        conv_bias (`bool`): bias in the patch embedding.
        hidden_size / num_hidden_layers / num_attention_heads / intermediate_size (`int`): transformer sizes.
        hidden_act (`str`): FFN activation. layer_norm_eps (`float`): LayerNorm epsilon.
        layer_norm_first (`bool`): pre-norm layers (False: post-norm as released).
        deep_norm (`bool`): scale residuals by `(2 * num_hidden_layers) ** 0.25` (DeepNorm).
        conv_pos (`int`) / conv_pos_groups (`int`): kernel size and groups of the convolutional position embedding.
        num_buckets (`int`) / max_distance (`int`): relative position buckets (log-spaced beyond `num_buckets / 4`).
        gru_rel_pos (`bool`): gate the relative position bias per query (a learned function of the query).
        attention_dropout (`float`): dropout on attention weights (training).
        initializer_range (`float`): std of the normal init.
    """

    model_type = "beats"
    base_config_key = "beats_config"

    num_mel_bins: int = 128
    patch_size: int = 16
    patch_embedding_size: int = 512
    conv_bias: bool = False
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    layer_norm_first: bool = False
    deep_norm: bool = True
    conv_pos: int = 128
    conv_pos_groups: int = 16
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True
    attention_dropout: float = 0.0
    initializer_range: float = 0.02


@strict
class OlaConfig(PreTrainedConfig):
    r"""
    Configuration of Ola (Liu et al., 2025, arXiv:2502.04328), an omni-modal LLM: OryxViT image/video features pooled
    by local-global attention pooling, Whisper + BEATs audio features, and a Qwen2 language model.

    Args:
        vision_config (`OryxViTConfig` or `dict`): the vision encoder.
        audio_config (`WhisperConfig` or `dict`): the Whisper model whose encoder is used (large-v3 in the release).
        beats_config (`BeatsConfig` or `dict`): the BEATs encoder.
        text_config (`Qwen2Config` or `dict`): the language model.
        audio_projector_hidden_size (`int`): hidden width of the audio projector (2048 in the release).
        audio_downsample_rate (`int`): consecutive encoder frames concatenated into one audio token (10).
        image_token_id / audio_token_id / video_token_id (`int`): placeholder ids in `input_ids`; each image, audio
            clip or video occupies as many placeholders as it has embeddings. They may lie outside the LLM vocabulary
            (the model never looks them up).
        projector_hidden_act (`str`): activation between the vision projector's pooling and second linear layer.
    """

    model_type = "ola"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=OryxViTConfig),
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper"),
        "beats_config": SubConfigSpec(config_class=BeatsConfig),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    beats_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    audio_projector_hidden_size: int = 2048
    audio_downsample_rate: int = 10
    image_token_id: int = 151665
    audio_token_id: int = 151666
    video_token_id: int = 151667
    projector_hidden_act: str = "gelu"
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.audio_downsample_rate < 1:
            raise ValueError(f"audio_downsample_rate must be >= 1, got {self.audio_downsample_rate}.")


__all__ = ["BeatsConfig", "OLA_VARIANTS", "ORYX_VIT_PRESETS", "OlaConfig", "OryxViTConfig"]
