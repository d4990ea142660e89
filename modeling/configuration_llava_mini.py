"""LLaVA-Mini configuration."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


@strict
class LlavaMiniConfig(PreTrainedConfig):
    r"""
    Configuration of LLaVA-Mini (Zhang et al., 2025, "LLaVA-Mini: Efficient Image and Video Large Multimodal Models with
    One Vision Token", arXiv:2501.03895): a CLIP vision tower, a query-based compressor that reduces the patch features
    of an image (or video frame) to `compressor_grid_size ** 2` tokens, an MLP projector, `num_prefusion_layers` Llama
    decoder layers that fuse the image into the text tokens ("modality pre-fusion"), and a Llama language model that
    sees only the compressed vision tokens and the fused text.

    Args:
        vision_config (`dict` or `PreTrainedConfig`): the CLIP vision tower (`clip_vision_model`).
        text_config (`dict` or `PreTrainedConfig`): the language model (`llama`); the pre-fusion layers use it too.
        compressor_grid_size (`int`): C; every image or frame becomes C*C vision tokens (1 for the release).
        compressor_num_attention_heads (`int`): heads of the compressor's cross-attention (8 in the original code).
        num_prefusion_layers (`int`): Llama decoder layers of the modality pre-fusion (4 for the release).
        resolution_ratio (`int`): N; N > 1 is the high-resolution mode: an image is split into N x N crops plus the
            whole image, the crop features are stitched into one (N*g) x (N*g) grid before compression.
        vision_feature_layer (`int`): CLIP hidden state used as patch features (-2: the penultimate layer).
        vision_feature_select_strategy (`str`): "default": the CLS token is dropped (the only choice the compressor's
            square grid allows).
        projector_hidden_act (`str`): activation of the 2-layer MLP projector. multimodal_projector_bias (`bool`).
        vision_chunk_size (`int`, *optional*): images / video frames encoded and fused together; bounds the memory of
            long videos (the original encodes one frame at a time). `None` encodes all at once. Results do not depend
            on it.
        image_token_id / video_token_id (`int`): placeholder ids; an image occupies C*C placeholders, a video of T
            frames T*C*C. They need not be inside the text vocabulary: placeholders are never embedded.
    """

    model_type = "llava_mini"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                         "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768},
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    compressor_grid_size: int = 1
    compressor_num_attention_heads: int = 8
    num_prefusion_layers: int = 4
    resolution_ratio: int = 1
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    vision_chunk_size: int | None = 16
    image_token_id: int = 128256
    video_token_id: int = 128257
    tie_word_embeddings: bool = False

    def validate_architecture(self):
        if self.compressor_grid_size < 1 or self.resolution_ratio < 1:
            raise ValueError(
                f"compressor_grid_size and resolution_ratio must be >= 1, got {self.compressor_grid_size} and "
                f"{self.resolution_ratio}."
            )
        if self.vision_feature_select_strategy != "default":
            raise ValueError(
                "vision_feature_select_strategy must be 'default' (the compressor needs the square patch grid without "
                f"the CLS token), got {self.vision_feature_select_strategy!r}."
            )
        if self.vision_config.hidden_size % self.compressor_num_attention_heads:
            raise ValueError(
                f"the compressor works at the vision width {self.vision_config.hidden_size}, which must be divisible "
                f"by compressor_num_attention_heads ({self.compressor_num_attention_heads})."
            )
        if self.image_token_id == self.video_token_id:
            raise ValueError(f"image_token_id and video_token_id must differ, both are {self.image_token_id}.")

    @property
    def num_vision_tokens(self) -> int:
        """Vision tokens per image or video frame (C*C)."""
        return self.compressor_grid_size**2


__all__ = ["LlavaMiniConfig"]
