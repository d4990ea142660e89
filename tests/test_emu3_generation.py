"""Emu3 AR token layout (against the released formatter's `ar_layout.json`) and visual generation end to end on a tiny
random `Emu3ForConditionalGeneration`: layout constraint, codes -> pixels, batched classifier-free guidance equal to
transformers' two-pass `UnbatchedClassifierFreeGuidanceLogitsProcessor`."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    Emu3Config,
    Emu3ForConditionalGeneration,
    LogitsProcessorList,
    UnbatchedClassifierFreeGuidanceLogitsProcessor,
)

from vistok.modeling.generation_emu3 import (
    Emu3ClassifierFreeGuidanceLogitsProcessor,
    Emu3VisualLayoutLogitsProcessor,
    generate_vision_codes,
)
from vistok.modeling.modeling_emu3 import Emu3VisionTokenizer
from vistok.modeling.token_layout_emu3 import Emu3TokenLayout


# a tiny vocabulary with the released special-token names: 0..8 special, 9..19 text, 20..83 visual tokens 0..63
SPECIAL = ["<|endoftext|>", "<|extra_203|>", "<|extra_204|>", "<|image token|>", "<|image start|>", "<|image end|>",
           "<|extra_200|>", "<|extra_201|>", "<image>"]
VOCAB = {name: i for i, name in enumerate(SPECIAL)} | {f"text{i}": i for i in range(9, 20)}
VOCAB |= {f"<|visual token {k:06d}|>": 20 + k for k in range(64)}
LAYOUT = Emu3TokenLayout.from_vocabulary(VOCAB)


def test_layout_from_vocabulary():
    assert (LAYOUT.visual_token_offset, LAYOUT.codebook_size, LAYOUT.eol_token_id, LAYOUT.eof_token_id) == (20, 64, 6, 7)
    assert (LAYOUT.bos_token_id, LAYOUT.image_token_id, LAYOUT.boi_token_id, LAYOUT.pad_token_id) == (1, 3, 4, 0)
    with pytest.raises(ValueError, match="lacks the Emu3 special tokens"):
        Emu3TokenLayout.from_vocabulary({k: v for k, v in VOCAB.items() if k != "<|extra_201|>"})


def test_image_layout_matches_the_released_formatter(parity_root):
    cases = sorted(p for p in (parity_root / "emu3_vq").glob("*/ar_layout.json"))
    if not cases:
        pytest.skip("no ar_layout.json in the Emu3 parity cases")
    layout = Emu3TokenLayout()
    for path in cases:
        reference = json.loads(path.read_text())
        for name, token in reference["special_tokens"].items():
            assert getattr(layout, name.replace("_token", "_token_id").replace("img_", "image_")) == token["id"], name
            assert getattr(layout, name.replace("img_", "image_")) == token["content"], name
        codes = load_file(path.parent / "io.safetensors")["codes_image"][0]
        assert list(codes.shape) == reference["grid_hw"]
        assert layout.prompt(codes) == reference["image_prompt_string"]
        ids = layout.vision_ids(codes)
        assert ids.tolist() == reference["image_prompt_ids_after_meta_text"]
        assert torch.equal(layout.codes_from_ids(ids, *codes.shape), codes)


def test_video_layout_round_trip_and_meta_text():
    codes = torch.arange(2 * 3 * 4).view(2, 3, 4) % 64
    prompt = LAYOUT.prompt(codes, fps=8, duration=1.5)
    assert prompt.startswith("<|image start|>3*4*2, 8 fps, 1.5 s<|image token|><|visual token 000000|>")
    assert prompt.count("<|extra_200|>") == 6 and prompt.count("<|extra_201|>") == 2
    assert LAYOUT.parse_meta_text("3*4*2, 8 fps, 1.5 s") == {"height": 3, "width": 4, "num_frames": 2, "fps": 8.0,
                                                             "duration": 1.5}
    assert LAYOUT.parse_meta_text("64*64")["num_frames"] is None
    ids = LAYOUT.vision_ids(codes)
    # <|image token|>, 2 frames x (3 rows x (4 + EOL) + EOF), <|image end|>
    assert len(ids) == 1 + 2 * (3 * 5 + 1) + 1
    assert ids[16].item() == LAYOUT.eof_token_id and ids[-1].item() == LAYOUT.eoi_token_id
    sequence = torch.cat([torch.tensor([1, 9, 4, 10]), ids, torch.tensor([2])])
    assert torch.equal(LAYOUT.codes_from_ids(sequence, 3, 4, num_frames=2), codes)


def test_layout_validation_errors():
    ids = LAYOUT.vision_ids(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="no <\\|image token\\|>"):
        LAYOUT.codes_from_ids(ids[1:], 2, 3)
    broken = ids.clone()
    broken[4] = 9  # the EOL after row 0
    with pytest.raises(ValueError, match="expected EOL after row 0 of frame 0 \\(id 6\\) at offset 3"):
        LAYOUT.codes_from_ids(broken, 2, 3)
    broken = ids.clone()
    broken[2] = 9  # a text token inside row 0
    with pytest.raises(ValueError, match="frame 0, row 0: expected 3 visual tokens"):
        LAYOUT.codes_from_ids(broken, 2, 3)
    with pytest.raises(ValueError, match="expected <\\|image end\\|>.*the end of the sequence"):
        LAYOUT.codes_from_ids(ids[:-1], 2, 3)
    with pytest.raises(ValueError, match="codes must be in \\[0, 64\\)"):
        LAYOUT.vision_ids(torch.full((2, 2), 64))
    with pytest.raises(ValueError, match="neither 'h\\*w'"):
        LAYOUT.parse_meta_text("64x64")


def test_layout_logits_processor_allows_exactly_the_layout():
    processor = Emu3VisualLayoutLogitsProcessor(LAYOUT, height=2, width=3, num_frames=2)
    ids = LAYOUT.vision_ids(torch.zeros(2, 2, 3, dtype=torch.long))
    prefix = torch.tensor([1, 9, 4, 10])
    for position in range(1, len(ids) + 2):
        sequence = torch.cat([prefix, ids[:position]])[None]
        allowed = processor(sequence, torch.zeros(1, len(VOCAB))).isfinite()[0].nonzero().flatten().tolist()
        target = ids[position].item() if position < len(ids) else LAYOUT.eos_token_id
        if 20 <= target:
            assert allowed == list(range(20, 84)), position
        else:
            assert allowed == [target], position
    # before the image prefix nothing is constrained
    assert processor(prefix[None], torch.zeros(1, len(VOCAB))).isfinite().all()


@pytest.fixture(scope="module")
def tiny_emu3():
    torch.manual_seed(0)
    config = Emu3Config(
        vq_config=dict(codebook_size=64, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 2],
                       num_res_blocks=1, attn_resolutions=[1], hidden_size=64),
        text_config=dict(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, attention_dropout=0.0),
        vocabulary_map=VOCAB,
    )
    return Emu3ForConditionalGeneration(config).eval()


def _prompt(*text_ids):
    return torch.tensor([LAYOUT.bos_token_id, *text_ids, LAYOUT.boi_token_id, 11, 12, LAYOUT.image_token_id])


def test_generation_end_to_end_codes_to_pixels(tiny_emu3):
    generator = torch.Generator().manual_seed(0)
    codes = generate_vision_codes(tiny_emu3, [_prompt(9, 10), _prompt(13)], height=3, width=4, layout=LAYOUT,
                                  do_sample=True, top_k=16, generator=generator)
    assert codes.shape == (2, 3, 4) and codes.min() >= 0 and codes.max() < 64
    again = generate_vision_codes(tiny_emu3, [_prompt(9, 10), _prompt(13)], height=3, width=4, layout=LAYOUT,
                                  do_sample=True, top_k=16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(codes, again)
    tokenizer = Emu3VisionTokenizer.from_vqvae(tiny_emu3.model.vqmodel)
    assert tokenizer.quantize.embedding.weight.data_ptr() == tiny_emu3.model.vqmodel.quantize.embedding.weight.data_ptr()
    with torch.no_grad():
        pixels = tokenizer.decode(codes).reconstruction
        expected = tiny_emu3.model.vqmodel.decode(codes)
    assert pixels.shape == (2, 3, 6, 8)
    torch.testing.assert_close(pixels, expected, atol=1e-4, rtol=1e-4)
    video = generate_vision_codes(tiny_emu3, [_prompt(9)], height=2, width=2, num_frames=2, layout=LAYOUT)
    assert video.shape == (1, 2, 2, 2)
    with torch.no_grad():
        assert tokenizer.decode(video).reconstruction.shape == (1, 8, 3, 4, 4)


def test_batched_guidance_equals_two_pass(tiny_emu3):
    prompt, negative = _prompt(9, 10, 13), _prompt(14)
    scale = 3.0
    batched = generate_vision_codes(tiny_emu3, [prompt], height=3, width=4, negative_prompt_ids=[negative],
                                    guidance_scale=scale, layout=LAYOUT)
    # two passes per step: transformers' unbatched processor runs the negative prompt in its own forward
    two_pass = tiny_emu3.generate(
        input_ids=prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long), do_sample=False,
        logits_processor=LogitsProcessorList([
            UnbatchedClassifierFreeGuidanceLogitsProcessor(scale, tiny_emu3, unconditional_ids=negative[None]),
            Emu3VisualLayoutLogitsProcessor(LAYOUT, 3, 4),
        ]),
        max_new_tokens=3 * 5 + 2, pad_token_id=0, eos_token_id=2,
    )
    expected = LAYOUT.codes_from_ids(two_pass[0], 3, 4)
    assert torch.equal(batched[0], expected)
    # and the guided scores agree at the first step
    ids = torch.nn.utils.rnn.pad_sequence([prompt, negative], batch_first=True, padding_value=0, padding_side="left")
    mask = (torch.arange(ids.shape[1]) >= ids.shape[1] - torch.tensor([[len(prompt)], [len(negative)]])).long()
    with torch.no_grad():
        logits = tiny_emu3(input_ids=ids, attention_mask=mask).logits[:, -1]
        guided = Emu3ClassifierFreeGuidanceLogitsProcessor(scale)(ids, logits)[0]
        cond = tiny_emu3(input_ids=prompt[None]).logits[0, -1].log_softmax(-1)
        uncond = tiny_emu3(input_ids=negative[None]).logits[0, -1].log_softmax(-1)
    torch.testing.assert_close(guided, uncond + scale * (cond - uncond), atol=1e-4, rtol=1e-4)
    assert not torch.equal(batched, generate_vision_codes(tiny_emu3, [prompt], height=3, width=4, layout=LAYOUT))
