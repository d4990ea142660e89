"""Tiny VideoLLaMA3-style models (transformers' ``video_llama_3`` classes through vistok's size-checking subclasses):
4 px patches, images at merge 1 (one token per patch), videos at merge 2 with DiffFP token pruning; a Qwen2 LLM with a
tied or an untied head."""

from transformers import (
    VideoLlama3Config,
    VideoLlama3ImageProcessorPil,
    VideoLlama3Processor,
    VideoLlama3VideoProcessor,
)

from vistok.modeling.modeling_video_llama_3 import VideoLlama3ForConditionalGeneration
from vistok.processing.chat_templates import videollama3_chat_template

from . import MultimodalTester, make_tiny_tokenizer


PATCH = 4
SPECIAL_TOKENS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}


class VideoLlama3Tester(MultimodalTester):
    model_class = VideoLlama3ForConditionalGeneration
    supports_video = True
    image_processor_backend = "pil"  # pixel-exact like the original; AutoProcessor reloads torchvision by default
    lora_parts = ("llm", "vision", "projector")

    def __init__(self, name: str, tie_word_embeddings: bool):
        self.name = name
        self.tie_word_embeddings = tie_word_embeddings

    def get_config(self):
        tokenizer = make_tiny_tokenizer(SPECIAL_TOKENS)
        return VideoLlama3Config(
            vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "patch_size": PATCH},
            text_config={
                "model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": 48, "intermediate_size": 96,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 1024, "tie_word_embeddings": self.tie_word_embeddings,
                "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
            },
            image_token_id=tokenizer.image_token_id,
            video_token_id=tokenizer.video_token_id,
            tie_word_embeddings=self.tie_word_embeddings,
        )

    def get_processor(self):
        image_processor = VideoLlama3ImageProcessorPil(
            patch_size=PATCH, merge_size=1, size={"shortest_edge": 4 * PATCH**2, "longest_edge": 160 * PATCH**2},
            image_mean=[0.5] * 3, image_std=[0.5] * 3,
        )
        video_processor = VideoLlama3VideoProcessor(
            patch_size=PATCH, merge_size=2, size={"shortest_edge": 4 * (2 * PATCH) ** 2,
                                                   "longest_edge": 96 * (2 * PATCH) ** 2},
            image_mean=[0.5] * 3, image_std=[0.5] * 3, min_frames=1, max_frames=8,
        )
        return VideoLlama3Processor(
            image_processor=image_processor, tokenizer=make_tiny_tokenizer(SPECIAL_TOKENS),
            video_processor=video_processor, chat_template=videollama3_chat_template(),
        )


TESTERS = [
    VideoLlama3Tester("videollama3-untied", tie_word_embeddings=False),
    VideoLlama3Tester("videollama3-tied", tie_word_embeddings=True),
]
