"""vistok models; importing this module registers them with transformers' Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .configuration_flextok import FLEXTOK_VAE_VARIANTS, FLEXTOK_VARIANTS, FlexTokConfig
from .configuration_llava_mini import LlavaMiniConfig
from .configuration_maetok import MAETOK_VARIANTS, MAETokConfig
from .configuration_titok import TITOK_VARIANTS, TiTokConfig
from .modeling_flextok import FlexTokModel, FlexTokPreTrainedModel
from .modeling_llava_mini import LlavaMiniForConditionalGeneration, LlavaMiniModel, LlavaMiniPreTrainedModel
from .modeling_maetok import MAETokModel, MAETokPreTrainedModel
from .modeling_titok import TiTokModel, TiTokPreTrainedModel


def register() -> None:
    """Registers every vistok config and model with the Auto classes (idempotent)."""
    for config_class, model_class in (
        (TiTokConfig, TiTokModel), (FlexTokConfig, FlexTokModel), (MAETokConfig, MAETokModel)
    ):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
    AutoConfig.register(LlavaMiniConfig.model_type, LlavaMiniConfig, exist_ok=True)
    AutoModel.register(LlavaMiniConfig, LlavaMiniModel, exist_ok=True)
    AutoModelForImageTextToText.register(LlavaMiniConfig, LlavaMiniForConditionalGeneration, exist_ok=True)


register()

__all__ = [
    "LlavaMiniConfig", "LlavaMiniForConditionalGeneration", "LlavaMiniModel", "LlavaMiniPreTrainedModel",
    "FLEXTOK_VAE_VARIANTS", "FLEXTOK_VARIANTS", "FlexTokConfig", "FlexTokModel", "FlexTokPreTrainedModel",
    "MAETOK_VARIANTS", "MAETokConfig", "MAETokModel", "MAETokPreTrainedModel",
    "TITOK_VARIANTS", "TiTokConfig", "TiTokModel", "TiTokPreTrainedModel"]
