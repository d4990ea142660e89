"""vistok models; importing this module registers them with transformers' Auto classes."""

from transformers import AutoConfig, AutoModel

from .configuration_titok import TITOK_VARIANTS, TiTokConfig
from .modeling_titok import TiTokModel, TiTokPreTrainedModel


def register() -> None:
    """Registers every vistok config and model with the Auto classes (idempotent)."""
    for config_class, model_class in ((TiTokConfig, TiTokModel),):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)


register()

__all__ = ["TITOK_VARIANTS", "TiTokConfig", "TiTokModel", "TiTokPreTrainedModel"]
