"""What vistok's subclasses of transformers' own model classes share (InternVL, VideoLLaMA3 add input checks)."""


class TransformersNativeMixin:
    """Marks a subclass of a transformers model class that only adds checks (no weights, no other computation) as
    transformers' own code.

    transformers treats every model class defined outside the `transformers` package as custom code: it then skips the
    weight conversions registered for the model type (for `internvl`, the renaming of the v4 key layout
    `language_model.model.*` that transformers' own `save_pretrained` writes back), and initialises weights and
    reports missing keys differently. Such a subclass loads and saves exactly like its parent class, file for file."""

    @classmethod
    def is_custom_code(cls) -> bool:
        return False
