"""Tiny Emu3 AR model (model type ``emu3``, what ``vistok-convert emu3`` writes, through vistok's same-name subclasses
of transformers' classes): a 4-level VQ (8x spatial, like the release, which ``Emu3Processor`` assumes) with 32
codes, a 2-layer Llama-style LLM, the chat template of the converted releases. An image becomes
``<|image start|>h*w<|image token|>``, ``h * (w + 1)`` copies of ``<image>`` (the model fills in each row's visual
tokens and the row end), ``<|extra_201|><|image end|>``.

LoRA: only the ``"llm"`` part. The VQ produces codes by an argmin, so no gradient reaches it and an adapter there
would never train; images enter the LLM through its own token embeddings.
"""

from transformers import Emu3Config, Emu3ImageProcessor, Emu3Processor

from vistok.modeling.modeling_emu3 import Emu3ForConditionalGeneration
from vistok.processing.chat_templates import EMU3_CHAT_TEMPLATE

from . import MultimodalTester, make_tiny_tokenizer


CODEBOOK_SIZE = 32
NAMED_TOKENS = {"image_token": "<image>", "boi_token": "<|image start|>", "eoi_token": "<|image end|>",
                "image_wrapper_token": "<|image token|>", "eof_token": "<|extra_201|>", "eol_token": "<|extra_200|>"}
OTHER_TOKENS = ("<|extra_203|>", "<|extra_204|>", *(f"<|visual token {k:06d}|>" for k in range(CODEBOOK_SIZE)))


class Emu3Tester(MultimodalTester):
    name = "emu3"
    model_class = Emu3ForConditionalGeneration
    lora_parts = ("llm",)

    def get_tokenizer(self):
        return make_tiny_tokenizer(NAMED_TOKENS, special_tokens=OTHER_TOKENS, bos_token="<|extra_203|>")

    def get_config(self):
        tokenizer = self.get_tokenizer()
        return Emu3Config(
            vq_config={
                "codebook_size": CODEBOOK_SIZE, "embed_dim": 4, "latent_channels": 4, "base_channels": 32,
                "channel_multiplier": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [3], "hidden_size": 32,
                "num_attention_heads": 1,
            },
            text_config={
                "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
                "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id, "attention_dropout": 0.0,
            },
            vocabulary_map=tokenizer.get_vocab(),
        )

    def get_processor(self):
        image_processor = Emu3ImageProcessor(min_pixels=16 * 16, max_pixels=48 * 48, image_mean=[0.5] * 3,
                                             image_std=[0.5] * 3)
        return Emu3Processor(image_processor, self.get_tokenizer(), chat_template=EMU3_CHAT_TEMPLATE)


TESTERS = [Emu3Tester()]
