"""Tiny multimodal-LLM testers, one module per model (``mm_testers/<model>.py`` defines ``TESTERS``: a list of
``MultimodalTester`` instances). The shared runners in ``tests/test_common_multimodal.py`` are parametrised over every
tester found here, so a new multimodal model gets all shared checks by adding one module; nothing else to register.

The interface, in full
----------------------
A tester is a subclass of ``MultimodalTester`` that sets

* ``name``: the test id (e.g. ``"internvl2_5-qwen2"``);
* ``model_class``: the class ``AutoModelForImageTextToText`` must return for the config (e.g.
  ``InternVLForConditionalGeneration``);

and implements two methods, both offline and cheap (tiny sizes: hidden 32-64, 1-2 layers, vocab < 400):

* ``get_config() -> PreTrainedConfig``: a tiny config whose token ids (``image_token_id``, ``video_token_id``, pad,
  eos) agree with the tokenizer below;
* ``get_processor() -> ProcessorMixin``: the model's real processor class, built from a tokenizer made with
  ``make_tiny_tokenizer`` (byte-level, every special token of the model added) and a ``chat_template``, and tiny image
  / video processors. ``processor.image_token`` (and ``video_token``) must be the placeholder the chat template
  writes for ``{"type": "image"}`` (``{"type": "video"}``).

Optional overrides (defaults in brackets):

* ``supports_video`` [False] / ``supports_audio`` [False]: which input kinds the checks feed (video checks write a
  real mp4 with PyAV; audio checks call ``make_audio``);
* ``image_sizes`` [((30, 44), (52, 26), (24, 24))]: raw (height, width) of the test images, chosen so that images in
  one batch give different numbers of tiles / patches;
* ``batch_layout`` [(2, 0, 1)]: images per prompt of the mixed batch (the batch-equals-single check);
* ``lora_parts`` [("llm", "vision")]: parts LoRA is tried on. ``vistok.modeling.lora.get_lora_target_modules`` finds
  them from the model's class attribute ``_lora_parts = {"llm": "model.language_model", "vision": "model.vision_tower",
  "projector": "model.multi_modal_projector"}`` (module-name prefixes; transformers' classes are declared in
  ``vistok/modeling/lora.py``); the gradient-checkpointing check also expects gradients in the ``"vision"`` part
  when the model declares one (Emu3 declares none: its VQ's codes come from an argmin);
* ``atol`` [1e-4]: tolerance of the exact-equality checks (batch vs single, save/load is always exact);
* ``make_audio(seed)``: one waveform (what the processor's ``audio=`` accepts), when ``supports_audio``; the audio
  check builds a prompt with one ``{"type": "audio"}`` part, compares ``generate()`` with a greedy loop and a batch
  (one prompt with audio, one without) with the items one by one;
* ``build_prompt(processor, num_images, num_videos, num_audios, question)``: text with placeholders [the processor's
  chat template applied to one user turn with that many ``{"type": "image"|"video"|"audio"}`` parts];
* ``prepare_inputs(processor, prompts, images, videos, audios)``: ``images`` is one list per prompt; the default
  flattens it and calls ``processor(text=..., images=..., videos=..., padding=True, padding_side="left",
  return_tensors="pt")``;
* ``corrupt_pixel_values(inputs)``: a copy of ``inputs`` whose pixels have the wrong size [last dimension cut by 2];
* ``known_failures`` [{}]: ``{check: reason}`` for shared checks the model's (transformers') classes fail today, where
  ``check`` is the test name without ``test_`` (e.g. ``"wrong_pixel_size_raises_value_error"``); the check then runs
  as a strict xfail with that reason, so a fix shows up. Use it only for failures you report, never to hide a bug;
* ``image_processor_backend`` [None]: the image-processor backend (``"pil"`` / ``"torchvision"``) the processor must
  be reloaded with to behave exactly as saved (``AutoProcessor`` reloads the default, torchvision, backend); used by
  ``reload_processor(path)``, which may also be overridden.

Module helpers: ``make_tiny_tokenizer``, ``make_char_tokenizer`` (exact vocabulary size, for converted tiny
checkpoints), ``write_video`` / ``read_video`` (PyAV); for vistok's subclasses of transformers' classes
``with_the_same_weights`` and ``assert_saves_like_transformers`` (transformers' files, which plain transformers runs).

Helpers every tester gets: ``make_model(seed)``, ``make_images(n, seed)`` (PIL), ``make_video(num_frames, seed)``
(uint8 (T, H, W, 3) with some static and some moving content), ``example_inputs(processor, num_images)``.
"""


import numpy as np
import torch

from tester_discovery import collect_testers


BYTE_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def make_tiny_tokenizer(extra_special_tokens: dict[str, str] | None = None, special_tokens: tuple[str, ...] = (),
                        chat_template: str | None = None, **kwargs):
    """A byte-level BPE tokenizer with no merges (ids 0-255 are the bytes), built offline.

    ``BYTE_SPECIAL_TOKENS`` come next (``<|endoftext|>`` = 256 is pad and eos, ``<|im_start|>`` = 257,
    ``<|im_end|>`` = 258), then ``special_tokens`` and the values of ``extra_special_tokens`` in order (ids 259, ...).
    ``extra_special_tokens`` maps attribute names to tokens, so ``{"image_token": "<image>"}`` gives
    ``tokenizer.image_token`` / ``tokenizer.image_token_id``. Text round-trips exactly through encode/decode."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import TokenizersBackend
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    extra_special_tokens = dict(extra_special_tokens or {})
    vocab = {char: index for index, char in enumerate(bytes_to_unicode().values())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    added = list(dict.fromkeys([*BYTE_SPECIAL_TOKENS, *special_tokens, *extra_special_tokens.values()]))
    backend.add_special_tokens(added)
    tokenizer = TokenizersBackend(
        tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|endoftext|>",
        extra_special_tokens=extra_special_tokens, padding_side="left", **kwargs,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def make_char_tokenizer(vocab_size: int, special_tokens: dict[int, str], **kwargs):
    """A character-level tokenizer of exactly ``vocab_size`` ids for converted checkpoints with tiny vocabularies:
    ``special_tokens`` sit at the given ids, ``<unk>`` is 0, printable ASCII and ``\n`` follow, fillers pad the rest.
    ``<|endoftext|>`` (if among ``special_tokens``) is pad and eos."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import TokenizersBackend

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab, free = {"<unk>": 0}, iter(i for i in range(1, vocab_size) if i not in special_tokens)
    for char in chars:
        vocab[char] = next(free)
    for index in free:
        vocab[f"<extra_{index}>"] = index
    vocab |= {token: index for index, token in special_tokens.items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()  # characters join without spaces
    backend.add_special_tokens(list(special_tokens.values()))
    extra = {"pad_token": "<|endoftext|>", "eos_token": "<|endoftext|>"} if "<|endoftext|>" in vocab else {}
    return TokenizersBackend(tokenizer_object=backend, unk_token="<unk>", **extra, **kwargs)


def write_video(path, frames: np.ndarray, fps: int = 1) -> None:
    """Writes uint8 (T, H, W, 3) frames to an mp4 with PyAV (lossy h264 rgb)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264rgb", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "rgb24"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_video(path) -> np.ndarray:
    """All frames of a video file as uint8 (T, H, W, 3), decoded with PyAV."""
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def answer_by_hand(model, processor, messages: list, max_new_tokens: int, **media) -> str:
    """Greedy answer to chat ``messages`` through ``processor`` and ``model.generate`` (the pipeline's reference);
    ``media``: ``images=[...]`` / ``videos=[...]`` in prompt order."""
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], return_tensors="pt", **media)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


_LOAD_WITHOUT_VISTOK = """
import json, sys
import torch, transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText

work, report = sys.argv[1], []
for index in range(int(sys.argv[2])):
    checkpoint = f"{work}/saved{index}"
    architecture = json.load(open(checkpoint + "/config.json"))["architectures"][0]
    inputs = load_file(f"{work}/inputs{index}.safetensors")
    models = {"named": getattr(transformers, architecture).from_pretrained(checkpoint).eval(),
              "auto": AutoModelForImageTextToText.from_pretrained(checkpoint).eval()}
    with torch.no_grad():
        save_file({k: m(**inputs).logits for k, m in models.items()}, f"{work}/logits{index}.safetensors")
    report.append([type(m).__module__ for m in models.values()])
print(json.dumps({"modules": report, "vistok": "vistok" in sys.modules}))
"""


def transformers_class_of(model) -> type:
    """The transformers class that vistok's same-name subclass (type of ``model``) extends."""
    return next(base for base in type(model).__mro__[1:]
                if base.__module__.startswith("transformers.") and base.__name__ == type(model).__name__)


def with_the_same_weights(checked_class, transformers_class, config):
    """vistok's subclass of a transformers model class and that class, built from ``config`` with the same weights (the
    subclass loads the other's state dict: the parameter names must agree), both in eval mode."""
    torch.manual_seed(0)
    plain = transformers_class(config).eval()
    checked = checked_class(config).eval()
    assert checked.state_dict().keys() == plain.state_dict().keys()
    checked.load_state_dict(plain.state_dict())
    return checked, plain


def assert_saves_like_transformers(models_and_inputs: list, work_dir) -> None:
    """For each ``(model, inputs)``, ``model`` being vistok's same-name subclass of a transformers class:
    ``save_pretrained`` writes the file that transformers' class writes for the same weights (``plain{i}/``), and
    config.json names that class; then one fresh Python that never imports vistok loads every saved folder through
    that name (looked up in ``transformers``) and through ``AutoModelForImageTextToText`` and computes the same logits
    on ``inputs``, bit for bit."""
    import json
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file

    for index, (model, inputs) in enumerate(models_and_inputs):
        transformers_class = transformers_class_of(model)
        model.save_pretrained(work_dir / f"saved{index}")
        plain = transformers_class(model.config)
        plain.load_state_dict(model.state_dict())
        plain.save_pretrained(work_dir / f"plain{index}")
        saved, by_plain = (load_file(str(work_dir / f"{d}{index}" / "model.safetensors")) for d in ("saved", "plain"))
        assert saved.keys() == by_plain.keys() and all(torch.equal(saved[k], by_plain[k]) for k in saved)
        config = json.loads((work_dir / f"saved{index}" / "config.json").read_text())
        assert config["architectures"] == [transformers_class.__name__]
        save_file({k: v.contiguous() for k, v in inputs.items()}, str(work_dir / f"inputs{index}.safetensors"))

    out = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_VISTOK, str(work_dir), str(len(models_and_inputs))],
                         capture_output=True, text=True, cwd=work_dir, check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    expected = [[transformers_class_of(model).__module__] * 2 for model, _ in models_and_inputs]
    assert report == {"modules": expected, "vistok": False}, report
    for index, (model, inputs) in enumerate(models_and_inputs):
        with torch.no_grad():
            logits = model(**inputs).logits
        assert all(torch.equal(v, logits) for v in load_file(str(work_dir / f"logits{index}.safetensors")).values())


class MultimodalTester:
    """How to build and exercise one tiny multimodal LLM (see the module docstring for the contract)."""

    name: str = ""
    model_class: type = None
    supports_video: bool = False
    supports_audio: bool = False
    image_sizes: tuple[tuple[int, int], ...] = ((30, 44), (52, 26), (24, 24))
    batch_layout: tuple[int, ...] = (2, 0, 1)
    lora_parts: tuple[str, ...] = ("llm", "vision")
    atol: float = 1e-4
    known_failures: dict[str, str] = {}
    image_processor_backend: str | None = None

    # -- to implement ------------------------------------------------------------------------------------------------
    def get_config(self):
        raise NotImplementedError

    def get_processor(self):
        raise NotImplementedError

    def make_audio(self, seed: int = 0):
        raise NotImplementedError(f"{self.name} sets supports_audio but does not implement make_audio")

    # -- helpers with defaults -------------------------------------------------------------------------------------
    def make_model(self, seed: int = 0, **config_overrides):
        torch.manual_seed(seed)
        config = self.get_config()
        for key, value in config_overrides.items():
            setattr(config, key, value)
        return self.model_class(config).eval()

    def make_images(self, num_images: int, seed: int = 0) -> list:
        from PIL import Image

        rng = np.random.default_rng(seed)
        sizes = [self.image_sizes[i % len(self.image_sizes)] for i in range(num_images)]
        return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]

    def make_video(self, num_frames: int = 4, seed: int = 0, height: int = 32, width: int = 48) -> np.ndarray:
        """uint8 (T, H, W, 3): a static random background with a bright square moving right by 8 px per frame."""
        rng = np.random.default_rng(seed)
        background = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        frames = np.repeat(background[None], num_frames, axis=0)
        for t in range(num_frames):
            left = (8 * t) % max(width - 8, 1)
            frames[t, 4:12, left:left + 8] = 255
        return frames

    def build_prompt(self, processor, num_images: int = 0, num_videos: int = 0, num_audios: int = 0,
                     question: str = "What is shown here?") -> str:
        content = ([{"type": "image"}] * num_images + [{"type": "video"}] * num_videos
                   + [{"type": "audio"}] * num_audios + [{"type": "text", "text": question}])
        messages = [{"role": "user", "content": content}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def prepare_inputs(self, processor, prompts: list[str], images: list[list] | None = None,
                       videos: list | None = None, audios: list | None = None):
        flat_images = [image for per_prompt in images for image in per_prompt] if images else []
        kwargs = {}
        if flat_images:
            kwargs["images"] = flat_images
        if videos:
            kwargs["videos"] = videos
        if audios:
            kwargs["audio"] = audios
        return processor(text=prompts, padding=True, padding_side="left", return_tensors="pt", **kwargs)

    def example_inputs(self, processor, num_images: int = 1, seed: int = 0, question: str = "What is shown here?"):
        """Inputs of one prompt with ``num_images`` images."""
        images = self.make_images(num_images, seed)
        prompt = self.build_prompt(processor, num_images=num_images, question=question)
        return self.prepare_inputs(processor, [prompt], [images])

    def corrupt_pixel_values(self, inputs) -> dict:
        bad = dict(inputs)
        bad["pixel_values"] = inputs["pixel_values"][..., :-2].contiguous()
        return bad

    def reload_processor(self, path):
        from transformers import AutoImageProcessor, AutoProcessor

        if self.image_processor_backend is None:
            return AutoProcessor.from_pretrained(path)
        # AutoProcessor(backend=...) would also apply the backend to the video processor, which may lack it
        image_processor = AutoImageProcessor.from_pretrained(path, backend=self.image_processor_backend)
        return AutoProcessor.from_pretrained(path, image_processor=image_processor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def all_testers() -> list[MultimodalTester]:
    return collect_testers(__name__, __path__)
