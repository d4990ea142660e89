"""What vistok configs share: building the config of a released variant by name."""


class VariantConfigMixin:
    """``from_variant(name)`` for a config whose class has a table of released variants.

    The class sets ``variants`` (name -> fields, each with the ``hub_id`` of the original release) and may override
    ``variant_fields`` when a table entry is not literally a set of config fields (presets, depths)."""

    variants: dict = {}

    @classmethod
    def variant_fields(cls, variant: dict) -> dict:
        """Config fields of one table entry (the entry without its `hub_id`)."""
        return {key: value for key, value in variant.items() if key != "hub_id"}

    @classmethod
    def from_variant(cls, name: str, **kwargs):
        """Config of a released variant (random weights; convert the release for its weights); `kwargs` override
        fields."""
        if name not in cls.variants:
            system = cls.__name__.removesuffix("Config")
            raise ValueError(f"unknown {system} variant {name!r}; known: {sorted(cls.variants)}.")
        return cls(**(cls.variant_fields(dict(cls.variants[name])) | kwargs))


__all__ = ["VariantConfigMixin"]
