"""Shared checks for every multimodal LLM tester in ``tests/mm_testers/`` (see its docstring for the interface).

Expected values come from an independent path each time: the same model before saving / without offload / in fp32 /
with the other attention kernel, each batch item run alone, a hand-written greedy loop for ``generate()``, direct
processor + generate calls for the pipelines.
"""

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, pipeline

import vistok  # noqa: F401  (registers vistok's classes)
from hub_fixtures import fake_hub, hub_client  # noqa: F401  (pytest fixtures)
from mm_testers import all_testers, read_video, write_video
from vistok.modeling.lora import get_lora_parts, get_lora_target_modules


TESTERS = all_testers()


def known_failure_marks(tester, check: str) -> list:
    reason = tester.known_failures.get(check)
    return [pytest.mark.xfail(reason=reason, strict=True)] if reason else []


def for_each_tester(select=lambda tester: True):
    """Parametrises a check over the testers ``select`` accepts; the check's name is the test name without
    ``test_``, and a tester that lists it in ``known_failures`` runs it as a strict xfail with its reason."""
    def decorate(check):
        name = check.__name__.removeprefix("test_")
        params = [pytest.param(t, id=t.name, marks=known_failure_marks(t, name)) for t in TESTERS if select(t)]
        return pytest.mark.parametrize("tester", params)(check)

    return decorate


def lora_cases(check_name: str) -> list:
    return [pytest.param(t, part, id=f"{t.name}-{part}", marks=known_failure_marks(t, check_name))
            for t in TESTERS for part in t.lora_parts]


def logits_of(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def float_inputs(inputs, dtype):
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}


def assert_clean_loading(info) -> None:
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"loading report is not empty: {problems}"


def max_diff(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


def greedy_by_hand(model, inputs, max_new_tokens: int, eos_token_id) -> list[int]:
    """Greedy decoding with full forwards and no cache: the reference for ``generate()``."""
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    others = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    new_tokens = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **others).logits
            token = int(logits[0, -1].argmax())
            new_tokens.append(token)
            if token in eos_token_id:
                break
            input_ids = torch.cat([input_ids, torch.tensor([[token]])], dim=1)
            attention_mask = torch.cat([attention_mask, torch.ones(1, 1, dtype=attention_mask.dtype)], dim=1)
    return new_tokens


def eos_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def generated_tokens(sequences: torch.Tensor, prompt_length: int, eos: set[int], pad_token_id: int) -> list[list[int]]:
    """New tokens per row, cut after the first eos (rows that finished early are padded by generate)."""
    rows = []
    for row in sequences[:, prompt_length:].tolist():
        cut = next((i + 1 for i, token in enumerate(row) if token in eos), len(row))
        rows.append(row[:cut])
    return rows


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """tester name -> directory with the tester's model (seed 0) and processor saved, built once per module."""
    cache = {}

    def get(tester):
        if tester.name not in cache:
            path = tmp_path_factory.mktemp(f"mm-{tester.name}")
            tester.make_model().save_pretrained(path)
            tester.get_processor().save_pretrained(path)
            cache[tester.name] = path
        return cache[tester.name]

    return get


# -- loading ----------------------------------------------------------------------------------------------------------
@for_each_tester()
def test_save_load_round_trip_through_auto_classes(tester, saved):
    model, processor = tester.make_model(), tester.get_processor()
    inputs = tester.example_inputs(processor, num_images=2)
    expected = logits_of(model, inputs)

    path = saved(tester)
    assert type(AutoConfig.from_pretrained(path)) is type(model.config)
    loaded, info = AutoModelForImageTextToText.from_pretrained(path, output_loading_info=True)
    assert_clean_loading(info)
    assert type(loaded) is tester.model_class
    loaded_processor = tester.reload_processor(path)
    assert type(loaded_processor) is type(processor)
    assert type(loaded_processor.image_processor) is type(processor.image_processor)
    assert loaded_processor.chat_template == processor.chat_template
    reloaded_inputs = tester.example_inputs(loaded_processor, num_images=2)
    assert reloaded_inputs.keys() == inputs.keys()
    for key in inputs:
        assert torch.equal(reloaded_inputs[key], inputs[key]), key
    assert torch.equal(logits_of(loaded.eval(), reloaded_inputs), expected)


@for_each_tester()
def test_hub_round_trip(tester, hub_client):
    repo_id = f"vistok-tests/{tester.name}-mm"
    model, processor = tester.make_model(), tester.get_processor()
    inputs = tester.example_inputs(processor, num_images=1)
    model.push_to_hub(repo_id)
    processor.push_to_hub(repo_id)
    assert {"config.json", "model.safetensors", "processor_config.json"} <= set(hub_client.hub.repo_files(repo_id))

    loaded, info = AutoModelForImageTextToText.from_pretrained(repo_id, output_loading_info=True)
    assert_clean_loading(info)
    loaded_processor = tester.reload_processor(repo_id)
    reloaded_inputs = tester.example_inputs(loaded_processor, num_images=1)
    for key in inputs:
        assert torch.equal(reloaded_inputs[key], inputs[key]), key
    assert torch.equal(logits_of(loaded.eval(), reloaded_inputs), logits_of(model, inputs))


@for_each_tester()
def test_device_map_auto_with_cpu_and_disk_offload(tester, saved, tmp_path):
    path = saved(tester)
    reference = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    inputs = tester.example_inputs(processor, num_images=1)

    total = sum(p.numel() * p.element_size() for p in reference.parameters())
    # room for the largest block that must stay whole, but not for the whole model
    blocks = [m for m in reference.modules() if type(m).__name__ in reference._no_split_modules]
    largest = max(sum(p.numel() * p.element_size() for p in m.parameters()) for m in blocks)
    budget = max(total // 2, 2 * largest)
    offloaded = AutoModelForImageTextToText.from_pretrained(
        path, device_map="auto", max_memory={"cpu": budget}, offload_folder=str(tmp_path / "offload")
    ).eval()
    placements = set(offloaded.hf_device_map.values())
    assert {"cpu", "disk"} <= placements, offloaded.hf_device_map
    assert max_diff(logits_of(offloaded, inputs), logits_of(reference, inputs)) < 1e-5
    generate_kwargs = {"max_new_tokens": 3, "do_sample": False}
    with torch.no_grad():
        expected_sequences = reference.generate(**inputs, **generate_kwargs)
        assert torch.equal(offloaded.generate(**inputs, **generate_kwargs), expected_sequences)


# -- numerics ---------------------------------------------------------------------------------------------------------
@for_each_tester()
def test_bf16_forward_close_to_fp32(tester):
    model, processor = tester.make_model(), tester.get_processor()
    inputs = tester.example_inputs(processor, num_images=2)
    expected = logits_of(model, inputs)
    bf16 = model.to(torch.bfloat16)
    got = logits_of(bf16, float_inputs(inputs, torch.bfloat16))
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    # bf16 keeps 8 bits of mantissa: a few percent of the logit scale through a tiny 2-layer model
    assert max_diff(got.float(), expected) < 0.05 * expected.abs().max().item()


@for_each_tester()
def test_eager_and_sdpa_attention_agree(tester):
    model, processor = tester.make_model(), tester.get_processor()
    inputs = tester.example_inputs(processor, num_images=2)
    results = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        for config in (model.config, *[getattr(model.config, k) for k in model.config.sub_configs]):
            assert config._attn_implementation == implementation, type(config).__name__
        results[implementation] = logits_of(model, inputs)
    assert max_diff(results["eager"], results["sdpa"]) < 1e-5


@for_each_tester()
def test_gradient_checkpointing_same_loss_and_gradients(tester):
    processor = tester.get_processor()
    inputs = tester.example_inputs(processor, num_images=2)
    inputs["labels"] = inputs["input_ids"].clone()

    def loss_and_grads(checkpointing: bool):
        model = tester.make_model().train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
            assert layers, "gradient checkpointing did not reach any layer"
        loss = model(**inputs).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(False)
    loss_ckpt, grads_ckpt = loss_and_grads(True)
    assert torch.allclose(loss, loss_ckpt, atol=1e-6)
    assert grads.keys() == grads_ckpt.keys()
    vision = get_lora_parts(tester.make_model()).get("vision")
    if vision:  # a trainable vision part gets gradients (Emu3's VQ has none: its codes come from an argmin)
        assert any(name.startswith(vision[0]) for name in grads)
    for name in grads:
        assert torch.allclose(grads[name], grads_ckpt[name], atol=1e-5), name


# -- LoRA -------------------------------------------------------------------------------------------------------------
@for_each_tester()
def test_lora_target_modules_split_the_model_into_parts(tester):
    model = tester.make_model()
    declared = get_lora_parts(model)
    per_part = {part: set(get_lora_target_modules(model, part)) for part in declared}
    for part, names in per_part.items():
        assert names and all(any(n.startswith(p + ".") for p in declared[part]) for n in names), part
    all_parts = set(get_lora_target_modules(model, tuple(declared)))
    assert all_parts == set().union(*per_part.values())
    assert sum(len(v) for v in per_part.values()) == len(all_parts)  # disjoint
    assert not any("lm_head" in name for name in all_parts)
    with pytest.raises(ValueError, match="subset of"):
        get_lora_target_modules(model, "decoder")


@pytest.mark.parametrize("tester,part", lora_cases("lora_trains_saves_and_merges"))
def test_lora_trains_saves_and_merges(tester, part, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    processor = tester.get_processor()
    inputs = tester.example_inputs(processor, num_images=2)
    inputs["labels"] = inputs["input_ids"].clone()
    model = tester.make_model()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    targets = get_lora_target_modules(model, part)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    losses = []
    for _ in range(6):
        loss = peft_model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses
    peft_model.eval()
    inputs.pop("labels")
    adapted = logits_of(peft_model, inputs)

    peft_model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tester.make_model(), tmp_path).eval()
    assert torch.allclose(logits_of(reloaded, inputs), adapted, atol=1e-6)

    merged = peft_model.merge_and_unload()
    assert not any("lora_" in k for k in merged.state_dict())
    assert max_diff(logits_of(merged, inputs), adapted) < 1e-4
    prefixes = get_lora_parts(merged)[part]
    changed = {k for k, v in merged.state_dict().items() if not torch.equal(v, base_state[k])}
    assert changed and all(any(k.startswith(p + ".") for p in prefixes) for k in changed), sorted(changed)[:5]


# -- generation and batching ------------------------------------------------------------------------------------------
@for_each_tester()
def test_generate_matches_greedy_by_hand(tester):
    model, processor = tester.make_model(), tester.get_processor()
    inputs = tester.example_inputs(processor, num_images=1)
    with torch.no_grad():
        sequences = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    eos = eos_ids(model)
    got = generated_tokens(sequences, inputs["input_ids"].shape[1], eos, processor.tokenizer.pad_token_id)[0]
    assert got == greedy_by_hand(model, inputs, 6, eos)


@for_each_tester()
def test_batch_with_different_numbers_of_images_equals_items_one_by_one(tester):
    model, processor = tester.make_model(), tester.get_processor()
    layout = tester.batch_layout
    questions = ["What is shown here?", "Describe.", "Count the objects in this picture, please."]
    prompts = [tester.build_prompt(processor, num_images=n, question=questions[i % len(questions)])
               for i, n in enumerate(layout)]
    images = [tester.make_images(n, seed=10 + i) for i, n in enumerate(layout)]
    batch = tester.prepare_inputs(processor, prompts, images)
    assert (batch["attention_mask"][:, 0] == 0).any(), "the batch should need (left) padding"
    batch_logits = logits_of(model, batch)
    eos = eos_ids(model)
    generate_kwargs = {"max_new_tokens": 4, "do_sample": False}
    with torch.no_grad():
        batch_generated = generated_tokens(model.generate(**batch, **generate_kwargs), batch["input_ids"].shape[1], eos,
                                           processor.tokenizer.pad_token_id)
    for i, (prompt, item_images) in enumerate(zip(prompts, images)):
        single = tester.prepare_inputs(processor, [prompt], [item_images])
        length = single["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][i, -length:], single["input_ids"][0])
        single_logits = logits_of(model, single)
        diff = max_diff(batch_logits[i, -length:], single_logits[0])
        assert diff < tester.atol, f"item {i} ({layout[i]} images): batch vs single max abs diff {diff:.3g}"
        with torch.no_grad():
            single_generated = generated_tokens(model.generate(**single, **generate_kwargs), length, eos,
                                                processor.tokenizer.pad_token_id)[0]
        assert batch_generated[i] == single_generated, f"item {i}"


@for_each_tester(lambda t: t.supports_audio)
def test_audio_prompts_generate_and_batch_like_items_one_by_one(tester):
    model, processor = tester.make_model(), tester.get_processor()
    prompts = [tester.build_prompt(processor, num_audios=1, question="What is said?"),
               tester.build_prompt(processor, question="Say something.")]
    audios = [tester.make_audio(seed=1)]
    single = tester.prepare_inputs(processor, prompts[:1], audios=audios)
    with torch.no_grad():
        sequences = model.generate(**single, max_new_tokens=4, do_sample=False)
    eos = eos_ids(model)
    got = generated_tokens(sequences, single["input_ids"].shape[1], eos, processor.tokenizer.pad_token_id)[0]
    assert got == greedy_by_hand(model, single, 4, eos)
    batch = tester.prepare_inputs(processor, prompts, audios=audios)
    length = single["input_ids"].shape[1]
    diff = max_diff(logits_of(model, batch)[0, -length:], logits_of(model, single)[0])
    assert diff < tester.atol, f"audio item: batch vs single max abs diff {diff:.3g}"


# -- pipelines --------------------------------------------------------------------------------------------------------
def expected_answer(model, processor, inputs, max_new_tokens: int) -> str:
    with torch.no_grad():
        sequences = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@for_each_tester()
def test_image_text_to_text_pipeline_with_images(tester, saved):
    path = saved(tester)
    pipe = pipeline("image-text-to-text", model=str(path))
    images = tester.make_images(2, seed=3)
    content = [{"type": "image", "image": image} for image in images]
    content.append({"type": "text", "text": "Compare the images."})
    messages = [{"role": "user", "content": content}]
    out = pipe(text=messages, max_new_tokens=5, do_sample=False, return_full_text=False)
    processor = pipe.processor
    prompt = tester.build_prompt(processor, num_images=2, question="Compare the images.")
    inputs = tester.prepare_inputs(processor, [prompt], [images])
    assert out[0]["generated_text"] == expected_answer(pipe.model, processor, inputs, 5)


@for_each_tester(lambda t: t.supports_video)
def test_image_text_to_text_pipeline_with_a_video_file(tester, saved, tmp_path):
    frames = tester.make_video(num_frames=4)
    video_path = tmp_path / "clip.mp4"
    write_video(video_path, frames)
    decoded = read_video(video_path)  # the reference sees what the file holds (the codec is lossy)
    assert decoded.shape == frames.shape

    path = saved(tester)
    pipe = pipeline("image-text-to-text", model=str(path))
    messages = [{"role": "user", "content": [{"type": "video", "path": str(video_path)},
                                             {"type": "text", "text": "What happens?"}]}]
    out = pipe(text=messages, max_new_tokens=5, do_sample=False, return_full_text=False)
    processor = pipe.processor
    prompt = tester.build_prompt(processor, num_videos=1, question="What happens?")
    inputs = tester.prepare_inputs(processor, [prompt], videos=[decoded])
    assert out[0]["generated_text"] == expected_answer(pipe.model, processor, inputs, 5)


# -- bad inputs -------------------------------------------------------------------------------------------------------
@for_each_tester()
def test_placeholder_count_differs_from_features(tester):
    model, processor = tester.make_model(), tester.get_processor()
    inputs = tester.example_inputs(processor, num_images=1)
    input_ids = inputs["input_ids"].clone()
    positions = (input_ids == model.config.image_token_id).nonzero()
    num_placeholders = len(positions)
    input_ids[tuple(positions[-1])] = processor.tokenizer.pad_token_id
    bad = dict(inputs) | {"input_ids": input_ids}
    with pytest.raises(ValueError) as error:
        model(**bad)
    message = str(error.value)
    assert str(num_placeholders - 1) in message and str(num_placeholders) in message, message


@for_each_tester()
def test_image_count_differs_from_placeholders(tester):
    processor = tester.get_processor()
    prompt = tester.build_prompt(processor, num_images=1)
    with pytest.raises(ValueError) as error:
        tester.prepare_inputs(processor, [prompt], [tester.make_images(2)])
    assert "1" in str(error.value) and "2" in str(error.value), str(error.value)


@for_each_tester()
def test_wrong_pixel_size_raises_value_error(tester):
    model, processor = tester.make_model(), tester.get_processor()
    inputs = tester.example_inputs(processor, num_images=1)
    bad = tester.corrupt_pixel_values(inputs)
    with pytest.raises(ValueError) as error:
        model(**bad)
    message = str(error.value)
    expected_shape, got_shape = inputs["pixel_values"].shape, bad["pixel_values"].shape
    assert str(expected_shape[-1]) in message and str(got_shape[-1]) in message, message


def test_checked_subclasses_save_what_plain_transformers_loads(tmp_path):
    """vistok's same-name subclasses of transformers' classes (InternVL, VideoLLaMA3, Emu3: no weights of their own)
    save transformers' own files; plain transformers, never importing vistok, loads them by config.json's
    `architectures` and through its Auto class and computes the same logits (one fresh process for all)."""
    from mm_testers import assert_saves_like_transformers

    def extends_same_name_transformers_class(cls):
        return cls.__module__.startswith("vistok.") and any(
            base.__module__.startswith("transformers.") and base.__name__ == cls.__name__ for base in cls.__mro__[1:])

    cases, seen = [], set()
    for tester in TESTERS:
        if extends_same_name_transformers_class(tester.model_class) and tester.model_class not in seen:
            seen.add(tester.model_class)
            processor = tester.get_processor()
            cases.append((tester.make_model(), dict(tester.example_inputs(processor, num_images=1))))
    assert {type(model).__name__ for model, _ in cases} >= {
        "InternVLForConditionalGeneration", "VideoLlama3ForConditionalGeneration", "Emu3ForConditionalGeneration"}
    assert_saves_like_transformers(cases, tmp_path)


def test_testers_cover_the_multimodal_models():
    assert {"internvl", "video_llama_3", "emu3"} <= {t.get_config().model_type for t in TESTERS}
