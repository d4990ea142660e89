"""Tiny LLaVA-Mini (vistok's classes): a CLIP tower of 24 px images in 4 px patches (36 patch tokens), C = 2 (4 vision
tokens per image or frame), 2 pre-fusion layers and a 2-layer Llama."""

from transformers.video_utils import VideoMetadata

from vistok import (
    LlavaMiniConfig,
    LlavaMiniForConditionalGeneration,
    LlavaMiniImageProcessorPil,
    LlavaMiniProcessor,
    LlavaMiniVideoProcessor,
)

from . import MultimodalTester, make_tiny_tokenizer


SIZE = 24
LLAMA3_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


class LlavaMiniTester(MultimodalTester):
    name = "llava_mini-clip-llama"
    model_class = LlavaMiniForConditionalGeneration
    supports_video = True
    lora_parts = ("llm", "vision", "projector")
    image_processor_backend = "pil"  # pixel-exact; AutoProcessor alone reloads the torchvision backend

    def get_tokenizer(self):
        return make_tiny_tokenizer({"image_token": "<image>", "video_token": "<video>"}, special_tokens=LLAMA3_TOKENS,
                                   bos_token="<|begin_of_text|>")

    def get_config(self):
        tokenizer = self.get_tokenizer()
        return LlavaMiniConfig(
            vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "image_size": SIZE, "patch_size": 4, "hidden_act": "quick_gelu"},
            text_config={"vocab_size": len(tokenizer), "hidden_size": 48, "intermediate_size": 96,
                         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                         "max_position_embeddings": 1024, "pad_token_id": tokenizer.pad_token_id,
                         "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id},
            compressor_grid_size=2,
            compressor_num_attention_heads=4,
            num_prefusion_layers=2,
            image_token_id=tokenizer.image_token_id,
            video_token_id=tokenizer.video_token_id,
        )

    def get_processor(self):
        sizes = {"size": {"shortest_edge": SIZE}, "crop_size": {"height": SIZE, "width": SIZE}}
        return LlavaMiniProcessor(LlavaMiniImageProcessorPil(**sizes), LlavaMiniVideoProcessor(**sizes),
                                  self.get_tokenizer(), num_vision_tokens=4)

    def prepare_inputs(self, processor, prompts, images=None, videos=None, audios=None):
        if not videos:
            return super().prepare_inputs(processor, prompts, images, videos, audios)
        # frame arrays carry no fps: say what the file of the video checks holds (1 frame/s), so the processor
        # samples them as it samples the decoded file
        metadata = [VideoMetadata(total_num_frames=len(video), fps=1.0) for video in videos]
        flat_images = [image for per_prompt in images for image in per_prompt] if images else None
        return processor(text=prompts, images=flat_images, videos=videos, padding=True, padding_side="left",
                         return_tensors="pt", videos_kwargs={"video_metadata": metadata})



TESTERS = [LlavaMiniTester()]
