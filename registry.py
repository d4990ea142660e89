"""The one table of vistok systems, and their registration with transformers' Auto classes and pipelines.

Adding a system is one `System` entry in `SYSTEMS` (and, for a new task, one `PipelineTask` in `PIPELINES`):

```python
System(
    "titok",
    config="modeling.configuration_titok:TiTokConfig",           # or the defining module of a transformers config
    models={"AutoModel": "modeling.modeling_titok:TiTokModel"},  # Auto class name -> model class
    image_processors={"torchvision": "processing.image_processing_titok:TiTokImageProcessor", "pil": ...},
    converters={"titok": "conversion.convert_titok"},          # vistok-convert ARCH -> converter module
    exports=("modeling.configuration_titok:TITOK_VARIANTS",),  # other public names of `vistok`
)
```

Paths are ``"module:attribute"`` relative to the ``vistok`` package, or absolute for a transformers class
(``"transformers.models.emu3.configuration_emu3:Emu3VQVAEConfig"``: the module that defines it). A system's ``name`` is
its config's ``model_type`` (a test checks this); systems built on transformers' classes (Emu3's tokenizer, InternVL,
VideoLLaMA3) use transformers' own model type and never register a second one.

Nothing is imported here: ``import vistok`` records the entries in transformers' Auto mappings as import paths (hooks
that run when transformers imports those mappings), and a class is imported the first time transformers asks for it
(``AutoModel.from_pretrained`` of that model type, say). So ``import vistok`` imports neither torch nor transformers,
and heavy dependencies (diffusers for FlexTok's VAE, PyAV, datasets) are imported only by the code that uses them.
"""

import importlib
import importlib.abc
import sys
from dataclasses import dataclass, field


@dataclass(frozen=True)
class System:
    """One vistok system: where its classes live and under which Auto classes and CLI names they are registered."""

    name: str
    config: str
    models: dict = field(default_factory=dict)
    image_processors: dict = field(default_factory=dict)
    video_processors: dict = field(default_factory=dict)
    feature_extractor: str | None = None
    processor: str | None = None
    converters: dict = field(default_factory=dict)
    exports: tuple = ()


@dataclass(frozen=True)
class PipelineTask:
    """A pipeline task of vistok's own, registered in transformers' ``PIPELINE_REGISTRY``."""

    task: str
    pipeline: str
    auto_model: str = "AutoModel"
    type: str = "image"


def _titok_style_processors(module: str, prefix: str) -> dict:
    return {"torchvision": f"{module}:{prefix}ImageProcessor", "pil": f"{module}:{prefix}ImageProcessorPil"}


def _checked_transformers_models(module: str, prefix: str) -> dict:
    generation = f"{module}:{prefix}ForConditionalGeneration"
    return {"AutoModel": f"{module}:{prefix}Model", "AutoModelForImageTextToText": generation,
            "AutoModelForMultimodalLM": generation}


SYSTEMS = (
    System(
        "titok",
        config="modeling.configuration_titok:TiTokConfig",
        models={"AutoModel": "modeling.modeling_titok:TiTokModel"},
        image_processors=_titok_style_processors("processing.image_processing_titok", "TiTok"),
        converters={"titok": "conversion.convert_titok"},
        exports=("modeling.configuration_titok:TITOK_VARIANTS", "modeling.modeling_titok:TiTokPreTrainedModel"),
    ),
    System(
        "maetok",
        config="modeling.configuration_maetok:MAETokConfig",
        models={"AutoModel": "modeling.modeling_maetok:MAETokModel"},
        image_processors=_titok_style_processors("processing.image_processing_maetok", "MAETok"),
        converters={"maetok": "conversion.convert_maetok"},
        exports=("modeling.configuration_maetok:MAETOK_VARIANTS", "modeling.modeling_maetok:MAETokPreTrainedModel"),
    ),
    System(
        "flextok",
        config="modeling.configuration_flextok:FlexTokConfig",
        models={"AutoModel": "modeling.modeling_flextok:FlexTokModel"},
        image_processors=_titok_style_processors("processing.image_processing_flextok", "FlexTok"),
        converters={"flextok": "conversion.convert_flextok"},
        exports=(
            "modeling.configuration_flextok:FLEXTOK_VARIANTS",
            "modeling.configuration_flextok:FLEXTOK_VAE_VARIANTS",
            "modeling.modeling_flextok:FlexTokPreTrainedModel",
            "modeling.scheduling_flextok:FlexTokFlowSampler",
        ),
    ),
    System(
        "larp",
        config="modeling.configuration_larp:LARPConfig",
        models={"AutoModel": "modeling.modeling_larp:LARPModel"},
        video_processors={"torchvision": "processing.video_processing_larp:LARPVideoProcessor"},
        converters={"larp": "conversion.convert_larp"},
        exports=(
            "modeling.configuration_larp:LARP_VARIANTS",
            "modeling.configuration_larp:LARP_PRIOR_PRESETS",
            "modeling.modeling_larp:LARPPreTrainedModel",
        ),
    ),
    System(
        "larp_ar",
        config="modeling.configuration_larp:LARPARConfig",
        models={
            "AutoModel": "modeling.modeling_larp_ar:LARPARModel",
            "AutoModelForCausalLM": "modeling.modeling_larp_ar:LARPARForCausalLM",
        },
        converters={"larp-ar": "conversion.convert_larp_ar"},
        exports=("modeling.configuration_larp:LARP_AR_VARIANTS",),
    ),
    # Emu3's vision tokenizer is transformers' `Emu3VQVAE` (same config and weights) behind the tokenizer API
    System(
        "emu3_vqgan",
        config="transformers.models.emu3.configuration_emu3:Emu3VQVAEConfig",
        models={"AutoModel": "modeling.modeling_emu3:Emu3VisionTokenizer"},
        image_processors={
            "torchvision": "processing.image_processing_emu3:Emu3VisionTokenizerImageProcessor",
            "pil": "processing.image_processing_emu3:Emu3VisionTokenizerImageProcessorPil",
        },
        video_processors={"torchvision": "processing.video_processing_emu3:Emu3VideoProcessor"},
        converters={"emu3-vq": "conversion.convert_emu3_vq"},
        exports=("modeling.token_layout_emu3:Emu3TokenLayout", "modeling.generation_emu3:generate_vision_codes"),
    ),
    System(
        "oryx_vit",
        config="modeling.configuration_ola:OryxViTConfig",
        models={"AutoModel": "modeling.modeling_ola:OryxViTModel"},
    ),
    System(
        "beats",
        config="modeling.configuration_ola:BeatsConfig",
        models={"AutoModel": "modeling.modeling_beats:BeatsModel"},
    ),
    System(
        "ola",
        config="modeling.configuration_ola:OlaConfig",
        models={
            "AutoModel": "modeling.modeling_ola:OlaModel",
            "AutoModelForImageTextToText": "modeling.modeling_ola:OlaForConditionalGeneration",
            "AutoModelForMultimodalLM": "modeling.modeling_ola:OlaForConditionalGeneration",
        },
        image_processors={
            "torchvision": "processing.image_processing_ola:OlaImageProcessor",
            "pil": "processing.image_processing_ola:OlaImageProcessor",
        },
        feature_extractor="processing.feature_extraction_ola:OlaFeatureExtractor",
        processor="processing.processing_ola:OlaProcessor",
        converters={"ola": "conversion.convert_ola"},
        exports=(
            "modeling.configuration_ola:OLA_VARIANTS",
            "modeling.modeling_ola:OlaPreTrainedModel",
            "processing.streaming:SentenceStreamer",
        ),
    ),
    System(
        "llava_mini",
        config="modeling.configuration_llava_mini:LlavaMiniConfig",
        models={
            "AutoModel": "modeling.modeling_llava_mini:LlavaMiniModel",
            "AutoModelForImageTextToText": "modeling.modeling_llava_mini:LlavaMiniForConditionalGeneration",
        },
        image_processors={"torchvision": "processing.processing_llava_mini:LlavaMiniImageProcessor",
                          "pil": "processing.processing_llava_mini:LlavaMiniImageProcessorPil"},
        video_processors={"torchvision": "processing.processing_llava_mini:LlavaMiniVideoProcessor"},
        processor="processing.processing_llava_mini:LlavaMiniProcessor",
        converters={"llava-mini": "conversion.convert_llava_mini"},
        exports=("modeling.modeling_llava_mini:LlavaMiniPreTrainedModel",),
    ),
    # already in transformers: vistok adds the converters from the original releases and subclasses (same names,
    # weights and outputs) that check pixel sizes (Emu3's also encode each image at its own size); no second model_type
    System(
        "internvl",
        config="transformers.models.internvl.configuration_internvl:InternVLConfig",
        models=_checked_transformers_models("modeling.modeling_internvl", "InternVL"),
        # used only for checkpoints with use_thumbnail=false (transformers' GotOcr2 processors otherwise)
        image_processors={"torchvision": "processing.image_processing_internvl2_5:InternVLChatImageProcessor",
                          "pil": "processing.image_processing_internvl2_5:InternVLChatImageProcessorPil"},
        converters={"internvl2_5": "conversion.convert_internvl2_5"},
    ),
    System(
        "video_llama_3",
        config="transformers.models.video_llama_3.configuration_video_llama_3:VideoLlama3Config",
        models=_checked_transformers_models("modeling.modeling_video_llama_3", "VideoLlama3"),
        video_processors={"torchvision": "processing.video_processing_videollama3:VideoLlama3PilVideoProcessor"},
        converters={"videollama3": "conversion.convert_videollama3"},
    ),
    System(
        "emu3",
        config="transformers.models.emu3.configuration_emu3:Emu3Config",
        models={"AutoModel": "modeling.modeling_emu3:Emu3Model",
                "AutoModelForImageTextToText": "modeling.modeling_emu3:Emu3ForConditionalGeneration"},
        converters={"emu3": "conversion.convert_emu3"},
    ),
)

PIPELINES = (
    PipelineTask("image-tokenization", "processing.pipeline_image_tokenization:ImageTokenizationPipeline"),
    PipelineTask("video-tokenization", "processing.pipeline_video_tokenization:VideoTokenizationPipeline", type="video"),
)


#: transformers tasks whose pipeline gets a vistok subclass (same behaviour for every other model)
PIPELINE_OVERRIDES = {
    "image-feature-extraction": "processing.pipeline_image_tokenization:TokenizerFeatureExtractionPipeline",
}


def converters() -> dict[str, str]:
    """``vistok-convert`` ARCH -> converter module (relative to ``vistok``)."""
    return {arch: module for system in SYSTEMS for arch, module in system.converters.items()}


def exports() -> dict[str, str]:
    """Public name of ``vistok`` -> ``"module:attribute"``, for the package's lazy ``__getattr__``."""
    paths = [task.pipeline for task in PIPELINES]
    for system in SYSTEMS:
        paths += [system.config, *system.models.values(), *system.image_processors.values()]
        paths += [*system.video_processors.values(), *system.exports]
        paths += [p for p in (system.feature_extractor, system.processor) if p]
    return {path.split(":")[1]: path for path in paths if not path.startswith("transformers")}


def resolve(path: str):
    """Imports ``"module:attribute"`` (relative to ``vistok``, or absolute)."""
    module_name, attribute = _absolute(path).split(":")
    return getattr(importlib.import_module(module_name), attribute)


# --------------------------------------------------------------------------------------------- lazy Auto mappings


def _class_path(key) -> str | None:
    if isinstance(key, type):
        return f"{key.__module__}:{key.__qualname__}"
    return None


def _absolute(path: str) -> str:
    if path.startswith(("transformers", f"{__package__}.")):
        return path
    return f"{__package__}.{path}"


class LazyEntries(dict):
    """The ``_extra_content`` dict of a transformers Auto mapping, with entries that are import paths until used.

    Keys are model-type strings (``CONFIG_MAPPING``) or config classes (every other mapping); a lazy class key is
    matched by its ``module:qualname`` path, so looking up an entry imports nothing but that entry's value."""

    def __init__(self, existing=()):
        super().__init__(existing)
        self.pending = {}

    def add(self, key: str, value) -> None:
        self.pending[key] = value

    def _pending_key(self, key):
        if isinstance(key, str) and key in self.pending:
            return key
        path = _class_path(key)
        return path if path in self.pending else None

    def _materialize(self, pending_key):
        value = self.pending.pop(pending_key)
        key = pending_key if ":" not in pending_key else resolve(pending_key)
        if isinstance(value, dict):
            value = {name: resolve(path) for name, path in value.items()}
        elif isinstance(value, str):
            value = resolve(value)
        dict.__setitem__(self, key, value)
        return key

    def _materialize_all(self):
        for pending_key in list(self.pending):
            self._materialize(pending_key)

    def __contains__(self, key):
        return dict.__contains__(self, key) or self._pending_key(key) is not None

    def __getitem__(self, key):
        if not dict.__contains__(self, key):
            pending_key = self._pending_key(key)
            if pending_key is not None:
                key = self._materialize(pending_key)
        return dict.__getitem__(self, key)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __len__(self):
        return dict.__len__(self) + len(self.pending)

    def __iter__(self):
        self._materialize_all()
        return dict.__iter__(self)

    def keys(self):
        self._materialize_all()
        return dict.keys(self)

    def values(self):
        self._materialize_all()
        return dict.values(self)

    def items(self):
        self._materialize_all()
        return dict.items(self)


def _lazy_entries(mapping) -> LazyEntries:
    if not isinstance(mapping._extra_content, LazyEntries):
        mapping._extra_content = LazyEntries(mapping._extra_content)
    return mapping._extra_content


def _register_configs(module) -> None:
    entries = _lazy_entries(module.CONFIG_MAPPING)
    for system in SYSTEMS:
        if not system.config.startswith("transformers"):
            entries.add(system.name, _absolute(system.config))


def _register_models(module) -> None:
    for system in SYSTEMS:
        for auto_name, path in system.models.items():
            _lazy_entries(getattr(module, auto_name)._model_mapping).add(_absolute(system.config), _absolute(path))


def _register_in(mapping_attribute: str, field_name: str):
    def register(module) -> None:
        mapping = getattr(module, mapping_attribute)
        for system in SYSTEMS:
            value = getattr(system, field_name)
            if value:
                value = {k: _absolute(v) for k, v in value.items()} if isinstance(value, dict) else _absolute(value)
                _lazy_entries(mapping).add(_absolute(system.config), value)

    return register


def _resolve_if_ready(path: str):
    """`resolve(path)`, or None while that module is itself being imported (it imported transformers.pipelines,
    which ran this registration first): the module calls `register_pipelines()` once it is complete."""
    module_name, attribute = _absolute(path).split(":")
    module = sys.modules.get(module_name)
    if module is not None and not hasattr(module, attribute):
        return None
    return resolve(path)


def register_pipelines(module=None) -> None:
    """Registers vistok's pipeline tasks (and its subclass of transformers' `image-feature-extraction`) in
    `PIPELINE_REGISTRY`; idempotent. Runs when transformers.pipelines is imported, and again at the end of each vistok
    pipeline module."""
    from transformers.models.auto import modeling_auto

    registry = (module or sys.modules["transformers.pipelines"]).PIPELINE_REGISTRY
    for task in PIPELINES:
        pipeline_class = _resolve_if_ready(task.pipeline)
        if pipeline_class is not None and task.task not in registry.get_supported_tasks():
            registry.register_pipeline(
                task.task, pipeline_class=pipeline_class, pt_model=getattr(modeling_auto, task.auto_model),
                type=task.type,
            )
    for task, path in PIPELINE_OVERRIDES.items():
        pipeline_class = _resolve_if_ready(path)
        if pipeline_class is not None:
            # the same task, defaults and models; the subclass changes only what runs for vistok models
            registry.supported_tasks[task]["impl"] = pipeline_class


#: transformers module -> what to register once it is imported
_HOOKS = {
    "transformers.models.auto.configuration_auto": _register_configs,
    "transformers.models.auto.modeling_auto": _register_models,
    "transformers.models.auto.image_processing_auto": _register_in("IMAGE_PROCESSOR_MAPPING", "image_processors"),
    "transformers.models.auto.video_processing_auto": _register_in("VIDEO_PROCESSOR_MAPPING", "video_processors"),
    "transformers.models.auto.feature_extraction_auto": _register_in("FEATURE_EXTRACTOR_MAPPING", "feature_extractor"),
    "transformers.models.auto.processing_auto": _register_in("PROCESSOR_MAPPING", "processor"),
    "transformers.pipelines": register_pipelines,
    # video files decode with PyAV when torchcodec is unusable (see processing/video_io.py)
    "transformers.video_processing_utils": lambda module: resolve("processing.video_io:install_pyav_fallback")(module),
}


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, loader, hook):
        self.loader, self.hook = loader, hook

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.hook(module)


class _PostImportHooks(importlib.abc.MetaPathFinder):
    """Runs a registration right after transformers has executed the module that holds the mapping."""

    def find_spec(self, name, path, target=None):
        hook = _HOOKS.get(name)
        if hook is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _HookedLoader(spec.loader, hook)
                return spec
        return None


def register_all() -> None:
    """Makes every vistok system known to transformers (idempotent; imports none of vistok's classes)."""
    if any(isinstance(finder, _PostImportHooks) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _PostImportHooks())
    for name, hook in _HOOKS.items():
        if name in sys.modules:
            hook(sys.modules[name])
