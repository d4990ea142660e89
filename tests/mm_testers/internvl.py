"""Tiny InternVL2.5-style models (transformers' ``internvl`` classes through vistok's size-checking subclasses): 16 px
tiles of 4x4 patches -> 4 tokens per tile after the pixel shuffle; up to 4 tiles + thumbnail per image; a Qwen2 or a
Llama (converted InternLM2) LLM."""

from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLProcessor, InternVLVideoProcessor

from vistok.modeling.modeling_internvl import InternVLForConditionalGeneration
from vistok.processing.chat_templates import internvl2_5_chat_template

from . import MultimodalTester, make_tiny_tokenizer


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TILE = 16
SPECIAL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                  "video_token": "<video>"}


class InternVLTester(MultimodalTester):
    model_class = InternVLForConditionalGeneration
    supports_video = True
    image_processor_backend = "pil"  # pixel-exact like the original; AutoProcessor reloads torchvision by default
    lora_parts = ("llm", "vision", "projector")

    def __init__(self, name: str, text_model_type: str, norm_type: str = "layer_norm"):
        self.name = name
        self.text_model_type = text_model_type
        self.norm_type = norm_type

    def get_tokenizer(self):
        return make_tiny_tokenizer(SPECIAL_TOKENS)

    def get_config(self):
        tokenizer = self.get_tokenizer()
        qwen = self.text_model_type == "qwen2"
        return InternVLConfig(
            vision_config={
                "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                "image_size": TILE, "patch_size": 4, "norm_type": self.norm_type,
                "attention_bias": self.norm_type == "layer_norm", "use_qk_norm": self.norm_type == "rms_norm",
            },
            text_config={
                "model_type": self.text_model_type, "vocab_size": len(tokenizer), "hidden_size": 48,
                "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 1024, "tie_word_embeddings": False, "attention_bias": qwen,
                "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
            },
            image_token_id=tokenizer.context_image_token_id,
            image_seq_length=4,
            downsample_ratio=0.5,
            tie_word_embeddings=False,
        )

    def get_processor(self):
        size = {"height": TILE, "width": TILE}
        image_processor = GotOcr2ImageProcessorPil(
            size=size, crop_to_patches=True, min_patches=1, max_patches=4, image_mean=IMAGENET_MEAN,
            image_std=IMAGENET_STD,
        )
        video_processor = InternVLVideoProcessor(size=size, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
        return InternVLProcessor(
            image_processor=image_processor, tokenizer=self.get_tokenizer(), video_processor=video_processor,
            image_seq_length=4, chat_template=internvl2_5_chat_template(default_system_message=None),
        )


TESTERS = [
    InternVLTester("internvl2_5-qwen2", "qwen2"),
    InternVLTester("internvl2_5-llama-rmsnorm-vit", "llama", norm_type="rms_norm"),
]
