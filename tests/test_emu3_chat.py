"""`vistok-convert emu3` (the Emu3-Chat/-Gen release layout -> transformers' `emu3` model type, loaded as vistok's
same-name `Emu3ForConditionalGeneration` + transformers' `Emu3Processor`) against `tests/fixtures/emu3_chat`, whose
expected ids, codes, logits and greedy tokens were made by the ORIGINAL Emu3 code (tokenizer, processor `mode="U"`,
vision tokenizer, `Emu3ForCausalLM`; see its README).
"""

import json
import shutil
import unicodedata
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline

import vistok  # noqa: F401  (registers vistok's classes)
from hub_fixtures import fake_hub, hub_client  # noqa: F401  (pytest fixtures)
from vistok.conversion.__main__ import convert as convert_api
from vistok.conversion.__main__ import main as convert_main
from vistok.conversion.convert_emu3 import find_vision_tokenizer
from vistok.conversion.utils import ConversionError
from vistok.modeling.modeling_emu3 import Emu3ForConditionalGeneration
from vistok.modeling.token_layout_emu3 import Emu3TokenLayout


FIXTURE = Path(__file__).parent / "fixtures" / "emu3_chat"
IO = load_file(FIXTURE / "io.safetensors")
EXPECTED = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))


def materialize_vision_tokenizer(dest: Path) -> Path:
    """The fixture's vision tokenizer folder with its `model.safetensors` rebuilt from `weights_manifest.json` by the
    rule the fixture README states (one seeded generator, tensors in manifest order)."""
    shutil.copytree(FIXTURE / "vision_tokenizer", dest)
    manifest = json.loads((dest / "weights_manifest.json").read_text())
    generator = torch.Generator().manual_seed(manifest["seed"])
    state = {}
    for name, shape, dtype in manifest["tensors"]:
        if dtype == "int64":
            state[name] = torch.zeros(shape, dtype=torch.int64)
        elif name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(shape, generator=generator)
        elif name.endswith("running_mean"):
            state[name] = 0.1 * torch.randn(shape, generator=generator)
        elif name == "quantize.embedding.weight":
            state[name] = 0.04 * torch.randn(shape, generator=generator)
        elif len(shape) == 1:
            base = 1.0 if name.endswith("weight") and "norm" in name else 0.0
            state[name] = base + 0.05 * torch.randn(shape, generator=generator)
        else:
            fan_in = torch.Size(shape[1:]).numel()
            state[name] = torch.randn(shape, generator=generator) / fan_in**0.5
    save_file(state, str(dest / "model.safetensors"))
    return dest


@pytest.fixture(scope="module")
def vision_tokenizer(tmp_path_factory) -> Path:
    return materialize_vision_tokenizer(tmp_path_factory.mktemp("emu3") / "Emu3-VisionTokenizer")


@pytest.fixture(scope="module")
def converted(vision_tokenizer, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("emu3") / "emu3-chat"
    assert convert_main(["emu3", str(FIXTURE / "original"), str(dest), "--vision-tokenizer", str(vision_tokenizer)]) == 0
    return dest


@pytest.fixture(scope="module")
def loaded(converted):
    model, info = AutoModelForImageTextToText.from_pretrained(converted, output_loading_info=True)
    assert not any(info.values()), info
    return model.eval(), AutoProcessor.from_pretrained(converted)


def chat_inputs(processor, index: int):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": EXPECTED["questions"][index]}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = Image.open(FIXTURE / f"image_{index}.png")
    return processor(text=[prompt], images=[image], return_tensors="pt")


def filled_ids(model, inputs) -> torch.LongTensor:
    """`input_ids` with the `<image>` placeholders replaced by what the model feeds in their place."""
    ids = inputs["input_ids"][0].clone()
    with torch.no_grad():
        tokens = model.model.get_image_tokens(inputs["pixel_values"], inputs["image_sizes"])
    ids[ids == model.config.image_token_id] = tokens.long()
    return ids


def test_auto_classes_and_config(loaded):
    model, processor = loaded
    assert type(model) is Emu3ForConditionalGeneration and model.config.model_type == "emu3"
    assert type(processor).__name__ == "Emu3Processor"
    original = json.loads((FIXTURE / "original" / "config.json").read_text())
    text = model.config.text_config
    assert (text.vocab_size, text.hidden_size, text.num_hidden_layers, text.num_key_value_heads) == (611, 32, 2, 2)
    assert (text.pad_token_id, text.bos_token_id, text.eos_token_id) == (
        original["pad_token_id"], original["bos_token_id"], original["eos_token_id"])
    assert text.rope_parameters["rope_theta"] == original["rope_theta"]
    assert model.generation_config.eos_token_id == original["eos_token_id"]
    # `<image>` takes the reserved `<|extra_0|>` id (= endoftext + 3), as in transformers' own Emu3 conversion
    assert model.config.image_token_id == original["pad_token_id"] + 3 == processor.tokenizer.image_token_id
    assert model.config.vq_config.codebook_size == 64


def test_tokenizer_ids_equal_the_original(loaded):
    tokenizer = loaded[1].tokenizer
    for text, expected in zip(EXPECTED["texts"], EXPECTED["expected_ids"]):
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == expected, text
        assert tokenizer.decode(expected) == unicodedata.normalize("NFC", text)
    visual = tokenizer.convert_tokens_to_ids("<|visual token 000063|>")
    assert tokenizer.decode([visual, *EXPECTED["expected_ids"][0]], skip_special_tokens=True) == "Hello world!"


@pytest.mark.parametrize("index", [0, 1])
def test_prompt_ids_codes_and_logits_equal_the_original(loaded, index):
    model, processor = loaded
    inputs = chat_inputs(processor, index)
    assert torch.equal(filled_ids(model, inputs), IO[f"input_ids_{index}"])
    with torch.no_grad():
        codes = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).image_tokens[0]
        logits = model(**inputs).logits[0]
    assert torch.equal(codes, IO[f"codes_{index}"])
    expected = IO[f"logits_{index}"]
    torch.testing.assert_close(logits[-len(expected):], expected, atol=1e-4, rtol=1e-4)


def test_left_padded_batch_layout_equals_the_original(loaded):
    """Both prompts and their images of different sizes in one processor call (the images zero-padded to a common
    size + `image_sizes`): the same left padding, mask and filled ids as the original's batch, whose images were
    encoded one by one; and each row's logits equal that prompt's alone."""
    model, processor = loaded
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
                for q in EXPECTED["questions"]]
    prompts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    images = [Image.open(FIXTURE / f"image_{i}.png") for i in (0, 1)]
    batch = processor(text=prompts, images=images, padding=True, return_tensors="pt")
    assert torch.equal(batch["attention_mask"], IO["batch_attention_mask"])
    assert batch["pixel_values"].shape[-2:] == (48, 56)  # 40x56 and 48x32 (height x width) padded
    ids = batch["input_ids"].clone()
    with torch.no_grad():
        ids[ids == model.config.image_token_id] = model.model.get_image_tokens(
            batch["pixel_values"], batch["image_sizes"]).long()
        logits = model(**batch).logits
    assert torch.equal(ids, IO["batch_input_ids"])
    torch.testing.assert_close(logits[0], IO["logits_0"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1, -len(IO["logits_1"]):], IO["logits_1"], atol=1e-4, rtol=1e-4)


def test_generate_and_pipeline_answer_like_the_original(loaded, converted):
    model, processor = loaded
    for index in (0, 1):
        inputs = chat_inputs(processor, index)
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        assert generated[0, inputs["input_ids"].shape[1]:].tolist() == IO[f"greedy_{index}"].tolist()

    pipe = pipeline("image-text-to-text", model=str(converted))
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.open(FIXTURE / "image_0.png")},
                                             {"type": "text", "text": EXPECTED["questions"][0]}]}]
    out = pipe(text=messages, max_new_tokens=5, do_sample=False, return_full_text=False)
    assert out[0]["generated_text"] == processor.decode(IO["greedy_0"], skip_special_tokens=True)


def test_image_layout_agrees_with_emu3_token_layout(loaded):
    """A real image through the processor -> codes -> `Emu3TokenLayout.prompt` gives the image part of the
    original chat prompt."""
    model, processor = loaded
    layout = Emu3TokenLayout.from_vocabulary(processor.tokenizer.get_vocab())
    inputs = chat_inputs(processor, 1)
    with torch.no_grad():
        codes = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).image_tokens[0]
    assert codes.shape == (48 // 8, 32 // 8)  # 36x52 -> smart resize -> 32x48 pixels
    image_ids = processor.tokenizer(layout.prompt(codes), add_special_tokens=False)["input_ids"]
    original = IO["input_ids_1"].tolist()
    start = original.index(layout.boi_token_id)
    assert original[start:start + len(image_ids)] == image_ids
    assert original[start + len(image_ids) - 1] == layout.eoi_token_id
    assert torch.equal(layout.codes_from_ids(torch.tensor(image_ids), *codes.shape), codes)


def test_image_generation_helpers_on_the_converted_model(loaded):
    """`generate_vision_codes` with the converted vocabulary's ids equals a hand-written constrained greedy loop
    (full forwards: the best visual token, EOL after each row, EOF and <|image end|> at the end); the codes decode."""
    from vistok import Emu3VisionTokenizer
    from vistok.modeling.generation_emu3 import generate_vision_codes

    model, processor = loaded
    layout = Emu3TokenLayout.from_vocabulary(processor.tokenizer.get_vocab())
    assert (layout.visual_token_offset, layout.codebook_size) == (547, 64)  # 336 BPE + 208 special + 3 image tokens
    height, width = 2, 3
    prompt = processor.tokenizer(layout.generation_prompt("a red square", height, width), add_special_tokens=False,
                                 return_tensors="pt").input_ids[0]
    codes = generate_vision_codes(model, [prompt], height=height, width=width, layout=layout)

    sequence, expected = prompt[None], []
    with torch.no_grad():
        for _ in range(height):
            for _ in range(width):
                logits = model(input_ids=sequence).logits[0, -1]
                visual = logits[layout.visual_token_offset:layout.visual_token_offset + layout.codebook_size]
                expected.append(int(visual.argmax()))
                sequence = torch.cat([sequence, torch.tensor([[layout.visual_token_offset + expected[-1]]])], 1)
            sequence = torch.cat([sequence, torch.tensor([[layout.eol_token_id]])], 1)
    assert codes.tolist() == [torch.tensor(expected).view(height, width).tolist()]
    pixels = Emu3VisionTokenizer.from_vqvae(model.model.vqmodel).decode(codes).reconstruction
    assert pixels.shape == (1, 3, 8 * height, 8 * width) and torch.isfinite(pixels).all()


def test_lora_on_the_llm_with_the_vision_tokenizer_kept_in_eval(converted, tmp_path):
    """The documented fine-tuning recipe: LoRA on the "llm" part; `train()` leaves the vision tokenizer in eval mode,
    so its BatchNorm3d statistics stay the release's, and the adapter reloads to the same logits."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from vistok.modeling.lora import get_lora_target_modules

    model = AutoModelForImageTextToText.from_pretrained(converted)
    processor = AutoProcessor.from_pretrained(converted)
    inputs = chat_inputs(processor, 0)
    targets = get_lora_target_modules(model, "llm")
    assert targets and all(name.startswith("model.text_model.") for name in targets)
    with pytest.raises(ValueError, match=r"has no \['vision'\] part"):
        get_lora_target_modules(model, "vision")
    vq_state = {k: v.clone() for k, v in model.model.vqmodel.state_dict().items()}
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    peft_model.train()
    assert model.model.text_model.training and not any(m.training for m in model.model.vqmodel.modules())
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss = peft_model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert all(torch.equal(v, vq_state[k]) for k, v in model.model.vqmodel.state_dict().items())
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(**inputs).logits
    peft_model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(converted), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, adapted, atol=1e-6, rtol=0)


def test_vision_tokenizer_sources(vision_tokenizer, tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    assert find_vision_tokenizer(release, vision_tokenizer) == vision_tokenizer
    (release / "vision_tokenizer").symlink_to(vision_tokenizer, target_is_directory=True)
    assert find_vision_tokenizer(release) == release / "vision_tokenizer"


def test_convert_from_the_hub_with_the_default_vision_tokenizer(vision_tokenizer, converted, hub_client, tmp_path):
    from huggingface_hub import HfApi

    api = HfApi()
    for repo_id, folder in (("vistok-tests/Emu3-Chat-tiny", FIXTURE / "original"),
                            ("BAAI/Emu3-VisionTokenizer", vision_tokenizer)):
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder)
        api.upload_file(path_or_fileobj=b"# code\n", path_in_repo="modeling_emu3.py", repo_id=repo_id)
    assert convert_main(["emu3", "vistok-tests/Emu3-Chat-tiny", str(tmp_path / "hub")]) == 0
    from_hub, local = load_file(tmp_path / "hub" / "model.safetensors"), load_file(converted / "model.safetensors")
    assert from_hub.keys() == local.keys() and all(torch.equal(from_hub[k], local[k]) for k in local)
    downloaded = {}
    for method, path, _ in hub_client.hub.requests:
        if method == "GET" and "/resolve/" in path:
            repo_id, rest = path.lstrip("/").split("/resolve/", 1)
            downloaded.setdefault(repo_id, set()).add(rest.split("/", 1)[1])
    assert downloaded == {
        "vistok-tests/Emu3-Chat-tiny": {p.name for p in (FIXTURE / "original").iterdir()},  # not the remote code
        "BAAI/Emu3-VisionTokenizer": {"config.json", "model.safetensors", "preprocessor_config.json"},
    }


def test_conversion_errors(vision_tokenizer, tmp_path):
    small_vq = tmp_path / "vq32"
    shutil.copytree(vision_tokenizer, small_vq)
    state = load_file(small_vq / "model.safetensors")
    state["quantize.embedding.weight"] = state["quantize.embedding.weight"][:32].contiguous()
    save_file(state, str(small_vq / "model.safetensors"))
    vq_config = json.loads((small_vq / "config.json").read_text())
    (small_vq / "config.json").write_text(json.dumps(vq_config | {"codebook_size": 32}))
    with pytest.raises(ConversionError, match="has 64 visual tokens but the vision tokenizer .* has 32 codes"):
        convert_api("emu3", FIXTURE / "original", tmp_path / "a", vision_tokenizer=small_vq)

    release = tmp_path / "release"
    shutil.copytree(FIXTURE / "original", release)
    (release / "emu3_vision_tokens.txt").write_text("\n".join(
        ["<|image token|>", "<|image start|>", "<|image end|>"] + [f"<|visual token {k:06d}|>" for k in range(32)]))
    with pytest.raises(ConversionError, match="the tokenizer has 579 tokens but the embedding has 611 rows"):
        convert_api("emu3", release, tmp_path / "b", vision_tokenizer=vision_tokenizer)
    (release / "emu3_vision_tokens.txt").unlink()
    with pytest.raises(ConversionError, match="has no emu3_vision_tokens.txt"):
        convert_api("emu3", release, tmp_path / "c", vision_tokenizer=vision_tokenizer)
    shutil.copy(FIXTURE / "original" / "emu3_vision_tokens.txt", release)
    config = json.loads((release / "config.json").read_text())
    (release / "config.json").write_text(json.dumps(config | {"eos_token_id": config["bos_token_id"]}))
    with pytest.raises(ConversionError, match=f"eos_token_id={config['bos_token_id']} but <\\|extra_204\\|> is"):
        convert_api("emu3", release, tmp_path / "d", vision_tokenizer=vision_tokenizer)
    (release / "config.json").write_text(json.dumps(config))
    shard = release / "model-00002-of-00002.safetensors"
    save_file(load_file(shard) | {"model.value_head.weight": torch.zeros(1, 32)}, str(shard))
    index = json.loads((release / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.value_head.weight"] = shard.name
    (release / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match=r"source tensors with no mapping: \['model.value_head.weight'\]"):
        convert_api("emu3", release, tmp_path / "d2", vision_tokenizer=vision_tokenizer)
    (release / "config.json").write_text(json.dumps(config | {"model_type": "emu3"}))
    with pytest.raises(ConversionError, match="already a transformers Emu3 checkpoint"):
        convert_api("emu3", release, tmp_path / "e", vision_tokenizer=vision_tokenizer)
    with pytest.raises(ConversionError, match="--vision-tokenizer does not apply to titok"):
        convert_api("titok", release, tmp_path / "f", vision_tokenizer=vision_tokenizer)


# -- vistok's Emu3 classes against transformers' ---------------------------------------------------------------------
def tiny_emu3():
    """The shared tiny Emu3 tester (8x VQ with 32 codes, 2-layer LLM, smart resize within [16^2, 48^2] pixels)."""
    from mm_testers.emu3 import TESTERS

    return TESTERS[0]


def same_size_batch(tester, processor):
    """Two left-padded prompts with two and one images, all 30x44 px (one size: no padded pixels)."""
    first, second, third = (tester.make_images(1, seed=seed)[0] for seed in (1, 2, 3))
    prompts = [tester.build_prompt(processor, num_images=2, question="Compare."),
               tester.build_prompt(processor, num_images=1, question="What is it? Say it in a few words.")]
    return tester.prepare_inputs(processor, prompts, [[first, second], [third]])


def generated_image_sequences(model, batch_size: int, height: int, width: int) -> torch.Tensor:
    """What `decode_image_tokens` takes: random codes as visual-token ids, a row end after each row, then 3 more ids
    (EOF, EOI, EOS as generated; the method drops them)."""
    codes = torch.randint(0, model.config.vq_config.codebook_size, (batch_size, height, width),
                          generator=torch.Generator().manual_seed(0))
    rows = torch.stack([model.vocabulary_mapping.convert_img2bpe(grid).flatten() for grid in codes])
    return torch.cat([rows, torch.zeros(batch_size, 3, dtype=rows.dtype)], dim=1)


def test_checked_classes_compute_what_transformers_computes():
    """Same weights, inputs of one image size: codes, image embeddings, logits (from ids or embeddings), the base
    model's hidden states and generated ids equal transformers' classes bit for bit; decoded pixels agree to 1e-5
    (vistok decodes an image's one returned frame, transformers all 4 temporal frames)."""
    from transformers import Emu3ForConditionalGeneration as PlainGeneration
    from transformers import Emu3Model as PlainModel

    from mm_testers import with_the_same_weights
    from vistok.modeling.modeling_emu3 import Emu3Model, Emu3VisionTokenizer

    tester = tiny_emu3()
    config, processor = tester.get_config(), tester.get_processor()
    checked, plain = with_the_same_weights(Emu3ForConditionalGeneration, PlainGeneration, config)
    assert isinstance(checked.model, Emu3Model) and isinstance(checked.model.vqmodel, Emu3VisionTokenizer)
    inputs = same_size_batch(tester, processor)
    assert inputs["image_sizes"].tolist() == [[32, 48]] * 3 and (inputs["attention_mask"] == 0).any()
    pixels, sizes = inputs["pixel_values"], inputs["image_sizes"]
    with torch.no_grad():
        assert torch.equal(checked(**inputs).logits, plain(**inputs).logits)
        embedded = {k: v for k, v in inputs.items() if k != "input_ids"}
        embedded["inputs_embeds"] = plain.get_input_embeddings()(inputs["input_ids"])
        assert torch.equal(checked(**embedded).logits, plain(**embedded).logits)
        got, expected = checked.model.get_image_features(pixels, sizes), plain.model.get_image_features(pixels, sizes)
        assert len(got.image_tokens) == len(got.pooler_output) == 3
        assert all(torch.equal(a, b) for a, b in zip(got.image_tokens, expected.image_tokens))
        assert all(torch.equal(a, b) for a, b in zip(got.pooler_output, expected.pooler_output))
        assert torch.equal(checked.model.get_image_tokens(pixels, sizes), plain.model.get_image_tokens(pixels, sizes))
        generate_kwargs = {"max_new_tokens": 4, "do_sample": False}
        assert torch.equal(checked.generate(**inputs, **generate_kwargs), plain.generate(**inputs, **generate_kwargs))

        sequences = generated_image_sequences(checked, batch_size=2, height=2, width=3)
        decoded = checked.decode_image_tokens(image_tokens=sequences, height=2, width=3)
        assert decoded.shape == (2, 3, 16, 24)
        torch.testing.assert_close(decoded, plain.decode_image_tokens(image_tokens=sequences, height=2, width=3),
                                   atol=1e-5, rtol=0)

        checked_base, plain_base = with_the_same_weights(Emu3Model, PlainModel, config)
        assert torch.equal(checked_base(**inputs).last_hidden_state, plain_base(**inputs).last_hidden_state)


def test_images_of_different_sizes_get_their_own_codes():
    """One processor call with three image sizes (zero-padded to a common size + image_sizes): the ids filling the
    placeholders are those of each image processed and encoded alone by transformers' class, and as many as the
    placeholders, h * (w + 1) per image."""
    from transformers import Emu3ForConditionalGeneration as PlainGeneration

    from mm_testers import with_the_same_weights

    tester = tiny_emu3()
    processor = tester.get_processor()
    checked, plain = with_the_same_weights(Emu3ForConditionalGeneration, PlainGeneration, tester.get_config())
    images = tester.make_images(3, seed=5)
    inputs = tester.prepare_inputs(processor, [tester.build_prompt(processor, num_images=3)], [images])
    sizes = inputs["image_sizes"].tolist()
    assert len({tuple(size) for size in sizes}) == 3
    assert list(inputs["pixel_values"].shape[-2:]) == [max(h for h, _ in sizes), max(w for _, w in sizes)]
    with torch.no_grad():
        ids = checked.model.get_image_tokens(inputs["pixel_values"], inputs["image_sizes"])
        alone = []
        for image in images:
            single = processor.image_processor([image], return_tensors="pt")
            alone.append(plain.model.get_image_tokens(single["pixel_values"], single["image_sizes"]))
    assert torch.equal(ids, torch.cat(alone))
    num_placeholders = (inputs["input_ids"] == checked.config.image_token_id).sum()
    assert len(ids) == sum(h // 8 * (w // 8 + 1) for h, w in sizes) == num_placeholders


def corrupt(inputs, **changes) -> dict:
    return dict(inputs) | changes


@pytest.mark.parametrize("case, expected", [
    ("narrower_pixels", ["image_sizes gives image 0 32x48 pixels, but pixel_values hold 32x46", "at most the pixel"]),
    ("size_not_multiple", ["expected every image size to be a positive multiple of", "factor 8", "got 30x48"]),
    ("size_larger", ["at most the pixel size (32x48), got 40x48"]),
    ("sizes_shape", ["image_sizes must have shape [1, 2] (height, width per image), got (1, 3)"]),
    ("video", ["pixel_values of shape [num_images, 3, height, width]", "got shape (1, 4, 3, 32, 48)"]),
    ("channels", ["pixel_values of shape [num_images, 3, height, width]", "got shape (1, 4, 32, 48)"]),
    # the vision tokenizer floors a side that is not a multiple of 8, as the original's convolutions do (32x44 px ->
    # 4x5 codes = 24 tokens), so the prompt's 4x6-code placeholders no longer fit
    ("no_sizes_not_multiple", ["28 image placeholders", "24 image tokens"]),
])
def test_wrong_pixels_raise_value_errors_naming_expected_and_got(case, expected):
    tester = tiny_emu3()
    model = tester.make_model()
    inputs = tester.example_inputs(tester.get_processor(), num_images=1)
    pixels = inputs["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 32, 48)
    bad = {
        "narrower_pixels": corrupt(inputs, pixel_values=pixels[..., :46]),
        "size_not_multiple": corrupt(inputs, image_sizes=torch.tensor([[30, 48]])),
        "size_larger": corrupt(inputs, image_sizes=torch.tensor([[40, 48]])),
        "sizes_shape": corrupt(inputs, image_sizes=torch.tensor([[32, 48, 1]])),
        "video": corrupt(inputs, pixel_values=pixels[:, None].expand(-1, 4, -1, -1, -1)),
        "channels": corrupt(inputs, pixel_values=torch.cat([pixels, pixels[:, :1]], dim=1)),
        "no_sizes_not_multiple": {k: v for k, v in corrupt(inputs, pixel_values=pixels[..., :44]).items()
                                  if k != "image_sizes"},
    }[case]
    with pytest.raises(ValueError) as error, torch.no_grad():
        model(**bad)
    assert all(part in str(error.value) for part in expected), str(error.value)


@pytest.mark.parametrize("change", [-1, 1])
def test_placeholder_count_error_names_tokens_not_features_times_hidden_size(change):
    """One image of 4x6 codes gives 4 * (6 + 1) = 28 image tokens; input_ids with 27 or 29 placeholders (given as ids
    or as embeddings) raise a ValueError with both counts."""
    tester = tiny_emu3()
    model, processor = tester.make_model(), tester.get_processor()
    inputs = tester.example_inputs(processor, num_images=1, question="Describe it in detail.")
    input_ids = inputs["input_ids"].clone()
    placeholders = (input_ids == model.config.image_token_id).nonzero()
    assert len(placeholders) == 28
    if change < 0:
        input_ids[tuple(placeholders[-1])] = processor.tokenizer.pad_token_id
    else:
        input_ids[0, placeholders[-1, 1] + 1] = model.config.image_token_id
    embeds = model.get_input_embeddings()(input_ids)
    for bad in (corrupt(inputs, input_ids=input_ids),
                {k: v for k, v in inputs.items() if k != "input_ids"} | {"inputs_embeds": embeds}):
        with pytest.raises(ValueError) as error, torch.no_grad():
            model(**bad)
        assert f"input_ids hold {28 + change} image placeholders" in str(error.value), str(error.value)
        assert "the images give 28 image tokens" in str(error.value), str(error.value)


def test_train_keeps_the_vision_tokenizer_frozen_in_eval_mode():
    tester = tiny_emu3()
    model, processor = tester.make_model(), tester.get_processor()
    inputs = tester.example_inputs(processor, num_images=2)
    vq_state = {k: v.clone() for k, v in model.model.vqmodel.state_dict().items()}
    assert any(k.endswith("running_mean") for k in vq_state)
    model.train()
    assert model.training and model.model.text_model.training and model.lm_head.training
    assert not any(module.training for module in model.model.vqmodel.modules())
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert all(torch.equal(v, vq_state[k]) for k, v in model.model.vqmodel.state_dict().items())
    model.model.vqmodel.train()  # training the tokenizer itself is an explicit choice
    assert model.model.vqmodel.training
    model.eval()
    assert not any(module.training for module in model.modules())


def test_offloaded_codebook_and_bfloat16_loading(tmp_path):
    """The quantizer (with the codebook) offloaded to disk: codes, logits and decoding equal the model in memory.
    Loading in bfloat16 keeps the vision tokenizer's code path in float32: the same codes from bfloat16 pixels.
    `AutoModel` loads the saved generation model as vistok's `Emu3Model`."""
    from vistok.modeling.modeling_emu3 import Emu3Model

    tester = tiny_emu3()
    model, processor = tester.make_model(), tester.get_processor()
    model.save_pretrained(tmp_path / "model")
    inputs = tester.example_inputs(processor, num_images=2)
    pixels, sizes = inputs["pixel_values"], inputs["image_sizes"]
    sequences = generated_image_sequences(model, batch_size=1, height=2, width=2)
    with torch.no_grad():
        expected = model.model.get_image_tokens(pixels, sizes), model(**inputs).logits
        expected_pixels = model.decode_image_tokens(image_tokens=sequences, height=2, width=2)

    vq_parts = ("encoder", "decoder", "quant_conv", "post_quant_conv")
    device_map = {"model.text_model": "cpu", "lm_head": "cpu", "model.vqmodel.quantize": "disk"}
    device_map |= {f"model.vqmodel.{part}": "cpu" for part in vq_parts}
    offloaded = AutoModelForImageTextToText.from_pretrained(
        tmp_path / "model", device_map=device_map, offload_folder=str(tmp_path / "offload")).eval()
    assert offloaded.hf_device_map["model.vqmodel.quantize"] == "disk"
    assert offloaded.model.vqmodel.quantize.embedding.weight.device.type == "meta"
    with torch.no_grad():
        assert torch.equal(offloaded.model.get_image_tokens(pixels, sizes), expected[0])
        assert torch.equal(offloaded(**inputs).logits, expected[1])
        assert torch.equal(offloaded.decode_image_tokens(image_tokens=sequences, height=2, width=2), expected_pixels)

    bf16 = AutoModelForImageTextToText.from_pretrained(tmp_path / "model", dtype=torch.bfloat16).eval()
    vqmodel = bf16.model.vqmodel
    assert bf16.model.text_model.embed_tokens.weight.dtype == torch.bfloat16
    assert {vqmodel.encoder.conv_in.weight.dtype, vqmodel.quantize.embedding.weight.dtype} == {torch.float32}
    with torch.no_grad():
        assert torch.equal(bf16.model.get_image_tokens(pixels.bfloat16(), sizes), expected[0])

    base, info = AutoModel.from_pretrained(tmp_path / "model", output_loading_info=True)
    assert type(base) is Emu3Model and not info["missing_keys"], info  # only the head is left out, as in transformers
    assert info["unexpected_keys"] == {"text_model.lm_head.weight"}, info
    with torch.no_grad():
        assert torch.equal(base.get_image_tokens(pixels, sizes), expected[0])
