"""LARP AR generator: parity with the original `LARP_AR` on every fixture case, generation (KV cache, classifier-free
guidance in one batched forward, frame prediction) and generate -> codes -> LARPModel.decode -> video."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM

import vistok  # noqa: F401
from vistok import LARPARConfig, LARPARForCausalLM
from vistok.conversion.__main__ import main as convert_main


def _ar_cases(parity_root):
    root = parity_root / "larp"
    cases = sorted(p for p in root.iterdir() if (p / "original_ar").is_dir()) if root.is_dir() else []
    if not cases:
        pytest.skip(f"no LARP AR parity cases under {root}")
    return cases


@pytest.fixture(scope="module")
def converted(parity_root, tmp_path_factory):
    """(case, generator dir, tokenizer dir) for every case, converted once through the CLI."""
    out = []
    for case in _ar_cases(parity_root):
        root = tmp_path_factory.mktemp(case.name)
        assert convert_main(["larp-ar", str(case / "original_ar"), str(root / "ar")]) == 0
        args = ["larp", str(case / "original"), str(root / "tokenizer")]
        if (case / "presets.json").is_file():
            args += ["--preset-overrides", str(case / "presets.json")]
        assert convert_main(args) == 0
        out.append((case, root / "ar", root / "tokenizer"))
    return out


def test_parity_with_original(converted):
    for case, ar_dir, _ in converted:
        model, info = AutoModelForCausalLM.from_pretrained(ar_dir, output_loading_info=True)
        assert isinstance(model, LARPARForCausalLM) and not any(info.values()), info
        assert type(AutoModel.from_pretrained(ar_dir)).__name__ == "LARPARModel"
        model.eval()
        io = load_file(case / "io.safetensors")
        codes = io["codes"]
        if model.config.frame_prediction:
            _check_frame_prediction_case(model, io, case.name)
            continue
        with torch.no_grad():
            # the call of the fixture: ar(cond_idx=labels, idx=codes[:, :-1], targets=codes)
            prompt = model.build_prompt(class_labels=io["ar_class_labels"])
            outputs = {"ar_logits": model(torch.cat([prompt, codes[:, :-1]], dim=1), labels=codes)}
            if "ar_logits_uncond" in io:  # models trained without class dropout have no null class
                null = torch.full_like(io["ar_class_labels"], model.config.num_classes)
                outputs["ar_logits_uncond"] = model(torch.cat([model.build_prompt(class_labels=null), codes[:, :-1]], 1))
        diffs = {name: (output.logits - io[name]).abs().max().item() for name, output in outputs.items()}
        diffs["ar_loss"] = (outputs["ar_logits"].loss - io["ar_loss"].squeeze()).abs().item()
        print(case.name, {k: f"{v:.2e}" for k, v in diffs.items()})
        for name, output in outputs.items():
            torch.testing.assert_close(output.logits, io[name], atol=1e-5, rtol=1e-4, msg=f"{case.name} {name}")
        torch.testing.assert_close(outputs["ar_logits"].loss, io["ar_loss"].squeeze(), atol=1e-5, rtol=1e-4)


def _check_frame_prediction_case(model, io, name):
    """Frame-prediction fixtures: `ar_logits, ar_loss = ar(cond_idx=ar_cond_idx, idx=codes[:, :-1], targets=codes)`
    with `ar_cond_idx` = condition tokens + the separator; the original keeps the logits from the separator on."""
    codes, condition = io["codes"], io["ar_cond_idx"]
    with torch.no_grad():
        prompt = model.build_prompt(condition_tokens=condition[:, :-1])
        assert torch.equal(prompt, condition), name  # the prompt ends with the separator, as the original's cond_idx
        output = model(torch.cat([prompt, codes[:, :-1]], dim=1), labels=codes)
    logits = output.logits[:, condition.shape[1] - 1:]
    print(name, {"ar_logits": f"{(logits - io['ar_logits']).abs().max().item():.2e}",
                 "ar_loss": f"{(output.loss - io['ar_loss'].squeeze()).abs().item():.2e}"})
    torch.testing.assert_close(logits, io["ar_logits"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(output.loss, io["ar_loss"].squeeze(), atol=1e-5, rtol=1e-4)


def test_generate_then_decode_a_video(converted):
    """generate() -> codes -> LARPModel.decode -> clip; the cached greedy sequence is the argmax of a full forward."""
    configs = [(case, LARPARConfig.from_pretrained(case[1])) for case in converted]
    with_null_class = [case for case, c in configs if not c.frame_prediction and c.class_dropout_prob > 0]
    if not with_null_class:
        pytest.skip("no class-conditional LARP AR case with a null class (classifier-free guidance)")
    _, ar_dir, tokenizer_dir = with_null_class[0]
    generator = AutoModelForCausalLM.from_pretrained(ar_dir).eval()
    tokenizer = AutoModel.from_pretrained(tokenizer_dir).eval()
    num_codes = generator.config.max_position_embeddings
    assert num_codes == tokenizer.config.num_latent_tokens
    prompt = generator.build_prompt(class_labels=torch.tensor([0, 3]))
    with torch.no_grad():
        greedy = generator.generate(prompt, max_new_tokens=num_codes, do_sample=False)
        teacher_forced = generator(greedy[:, :-1]).logits
        assert torch.equal(teacher_forced.argmax(-1), greedy[:, 1:])
        sampled = generator.generate(prompt, max_new_tokens=num_codes, do_sample=True, top_k=0, cfg_scale=1.25)
        codes = sampled[:, prompt.shape[1]:]
        assert codes.shape == (2, num_codes) and int(codes.max()) < tokenizer.config.codebook_size
        video = tokenizer.decode(codes, num_frames=tokenizer.config.num_frames).reconstruction
    config = tokenizer.config
    height, width = config.frame_size
    # the decoder predicts whole temporal patches (a remainder of num_frames is never read by the original either)
    frames = config.num_frames // config.decoder_temporal_patch_size * config.decoder_temporal_patch_size
    assert video.shape == (2, frames, 3, height, width) and torch.isfinite(video).all()


def test_class_conditional_release_with_several_cls_tokens(parity_root, tmp_path):
    """The original takes `cls_token_num` > 1 for a class-conditional model, but its class embedding gives one token
    all the same: only `abs_pe` grows by cls_token_num - 1 rows and the eval logits on the fixture's sequence (which
    reads the first rows only) are the fixture's. vistok converts such a release and gives those logits."""
    case = next(case for case in _ar_cases(parity_root) if not json.loads(
        (case / "original_ar" / "config.json").read_text()).get("frame_prediction"))
    source = tmp_path / "release"
    shutil.copytree(case / "original_ar", source)
    config = json.loads((source / "config.json").read_text())
    config["cls_token_num"] = 3
    (source / "config.json").write_text(json.dumps(config))
    state = load_file(case / "original_ar" / "model.safetensors")
    state["abs_pe"] = torch.cat([state["abs_pe"], torch.randn(1, 2, state["abs_pe"].shape[-1])], dim=1)
    save_file(state, source / "model.safetensors")
    assert convert_main(["larp-ar", str(source), str(tmp_path / "out")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert model.config.num_condition_tokens == 3 and model.config.condition_length == 1
    io = load_file(case / "io.safetensors")
    codes = io["codes"]
    prompt = model.build_prompt(class_labels=io["ar_class_labels"])
    assert prompt.shape == (codes.shape[0], 1)
    with torch.no_grad():
        output = model(torch.cat([prompt, codes[:, :-1]], dim=1), labels=codes)
        torch.testing.assert_close(output.logits, io["ar_logits"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(output.loss, io["ar_loss"].squeeze(), atol=1e-5, rtol=1e-4)
        # the longer table takes two more codes than max_seq_len, as the original's does
        longest = torch.cat([prompt, codes, codes[:, :1]], dim=1)
        assert model(longest).logits.shape[1] == codes.shape[1] + 2
        with pytest.raises(ValueError, match=f"at most {codes.shape[1] + 2} tokens"):
            model(torch.cat([longest, codes[:, :1]], dim=1))


def _tiny(**overrides) -> LARPARForCausalLM:
    config = LARPARConfig(
        vocab_size=24, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, max_position_embeddings=10, num_classes=3, **overrides,
    )
    torch.manual_seed(0)
    model = LARPARForCausalLM(config).eval()
    with torch.no_grad():  # the original zero-initialises the head; give it weights so the logits matter
        model.lm_head.weight.normal_(std=0.5)
    return model


def test_classifier_free_guidance_is_one_batched_pass_equal_to_two_passes():
    model = _tiny()
    labels = torch.tensor([1, 2])
    prompt = model.build_prompt(class_labels=labels)
    null_prompt = model.build_prompt(class_labels=torch.full_like(labels, 3))
    scale = 2.5
    calls = []
    hook = model.model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    with torch.no_grad():
        guided = model.generate(prompt, max_new_tokens=6, do_sample=False, cfg_scale=scale)
    hook.remove()
    assert calls and all(batch == 4 for batch in calls) and len(calls) == 6  # one forward of 2 x batch per step
    # reference: two separate uncached passes per step (conditional and null class), combined by hand
    sequence = prompt
    with torch.no_grad():
        for _ in range(6):
            codes = sequence[:, 1:]
            conditional = model(torch.cat([prompt, codes], 1)).logits[:, -1]
            unconditional = model(torch.cat([null_prompt, codes], 1)).logits[:, -1]
            guided_logits = unconditional + scale * (conditional - unconditional)
            sequence = torch.cat([sequence, guided_logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(guided, sequence)


def test_frame_prediction_variant():
    model = _tiny(frame_prediction=True, num_condition_tokens=5)
    condition = torch.randint(0, 24, (2, 4), generator=torch.Generator().manual_seed(0))
    prompt = model.build_prompt(condition_tokens=condition)
    assert prompt.shape == (2, 5) and (prompt[:, -1] == 24).all()  # the separator closes the condition
    with torch.no_grad():
        sequence = model.generate(prompt, max_new_tokens=10, do_sample=False)
        assert sequence.shape == (2, 15) and int(sequence[:, 5:].max()) < 24
        assert torch.equal(model(sequence[:, :-1]).logits.argmax(-1)[:, 4:], sequence[:, 5:])
        loss = model(sequence[:, :-1], labels=sequence[:, 5:]).loss
        assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="classifier-free guidance needs a class-conditional model"):
        model(prompt, cfg_scale=1.5)
    with pytest.raises(ValueError, match=r"condition_tokens of shape \[batch, 4\]"):
        model.build_prompt(condition_tokens=condition[:, :3])


def test_bad_inputs_raise_clear_errors():
    model = _tiny()
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 28\)"):
        model(torch.tensor([[28, 0]]))
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 4\)"):
        model.build_prompt(class_labels=torch.tensor([4]))
    with pytest.raises(ValueError, match="at most 10 tokens"):
        model(torch.zeros(1, 11, dtype=torch.long))


def test_save_load_and_attention_implementations(tmp_path):
    model = _tiny()
    model.save_pretrained(tmp_path)
    ids = torch.cat([model.build_prompt(class_labels=torch.tensor([0, 2])), torch.randint(0, 24, (2, 8))], dim=1)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    eager = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = model(ids).logits
        assert torch.equal(reloaded.eval()(ids).logits, expected)
        torch.testing.assert_close(eager(ids).logits, expected, atol=1e-5, rtol=1e-5)


def _original_forward(weights: dict, args: dict, prefix_embeddings, idx):
    """The released LARP_AR forward written out from its state dict (fused wqkv, RMSNorm, SwiGLU, absolute positions,
    grouped-query heads repeated with repeat_interleave): an independent reference for the frame-prediction path."""
    dim, heads = args["dim"], args["n_head"]
    kv_heads, head_dim = args["n_kv_head"] or heads, args["dim"] // args["n_head"]

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + args["norm_eps"]) * weight

    x = torch.cat([prefix_embeddings, weights["tok_embeddings.weight"][idx]], dim=1)
    x = x + weights["abs_pe"][:, : x.shape[1]]
    batch, length, _ = x.shape
    for i in range(args["n_layer"]):
        h = rms(x, weights[f"layers.{i}.attention_norm.weight"])
        q, k, v = (h @ weights[f"layers.{i}.attention.wqkv.weight"].T).split(
            [dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
        q = q.view(batch, length, heads, head_dim).transpose(1, 2)
        k, v = (t.view(batch, length, kv_heads, head_dim).transpose(1, 2).repeat_interleave(heads // kv_heads, dim=1)
                for t in (k, v))
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + attended.transpose(1, 2).reshape(batch, length, dim) @ weights[f"layers.{i}.attention.wo.weight"].T
        h = rms(x, weights[f"layers.{i}.ffn_norm.weight"])
        gate = torch.nn.functional.silu(h @ weights[f"layers.{i}.feed_forward.w1.weight"].T)
        x = x + (gate * (h @ weights[f"layers.{i}.feed_forward.w3.weight"].T)) @ weights[f"layers.{i}.feed_forward.w2.weight"].T
    return rms(x, weights["norm.weight"]) @ weights["output.weight"].T


def test_frame_prediction_checkpoint_converts(tmp_path):
    """A checkpoint in the released LARP-L-long-AR-FP layout (random tensors, tiny sizes, grouped-query heads) converts
    and matches the written-out original forward."""
    from safetensors.torch import save_file

    args = dict(dim=32, n_layer=2, n_head=4, n_kv_head=2, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5,
                num_classes=101, class_dropout_prob=0.1, model_type="class_cond", vocab_size=20, cls_token_num=6,
                max_seq_len=8, use_fixed_pe=False, frame_prediction=True, token_dropout_p=0.1, resid_dropout_p=0.1,
                attn_dropout_p=0.0, ffn_dropout_p=0.1, drop_path_rate=0.0, initializer_range=0.02, rope_base=10000,
                max_batch_size=32)
    generator = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=generator) * 0.3  # noqa: E731
    weights = {"tok_embeddings.weight": rand(21, 32), "abs_pe": rand(1, 8 + 6 - 1, 32), "norm.weight": 1 + rand(32),
               "output.weight": rand(20, 32)}
    for i in range(2):
        weights |= {f"layers.{i}.attention.wqkv.weight": rand(32 + 2 * 16, 32), f"layers.{i}.attention.wo.weight": rand(32, 32),
                    f"layers.{i}.feed_forward.w1.weight": rand(96, 32), f"layers.{i}.feed_forward.w3.weight": rand(96, 32),
                    f"layers.{i}.feed_forward.w2.weight": rand(32, 96), f"layers.{i}.attention_norm.weight": 1 + rand(32),
                    f"layers.{i}.ffn_norm.weight": 1 + rand(32)}
    source = tmp_path / "source"
    source.mkdir()
    save_file(weights, source / "model.safetensors")
    (source / "config.json").write_text(__import__("json").dumps(args))
    assert convert_main(["larp-ar", str(source), str(tmp_path / "dest")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dest").eval()
    assert model.config.frame_prediction and model.config.num_key_value_heads == 2
    condition = torch.randint(0, 20, (2, 5), generator=generator)
    codes = torch.randint(0, 20, (2, 7), generator=generator)
    prompt = model.build_prompt(condition_tokens=condition)
    with torch.no_grad():
        logits = model(torch.cat([prompt, codes], dim=1)).logits
        reference = _original_forward(weights, args, weights["tok_embeddings.weight"][prompt], codes)
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-4)
