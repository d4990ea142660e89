"""vistok models; importing this module registers them with transformers' Auto classes."""

from transformers import AutoConfig, AutoModel

from .configuration_flextok import FLEXTOK_VAE_VARIANTS, FLEXTOK_VARIANTS, FlexTokConfig
from .configuration_maetok import MAETOK_VARIANTS, MAETokConfig
from .configuration_ola import OLA_VARIANTS, BeatsConfig, OlaConfig, OryxViTConfig
from .configuration_titok import TITOK_VARIANTS, TiTokConfig
from .modeling_flextok import FlexTokModel, FlexTokPreTrainedModel
from .modeling_beats import BeatsModel
from .modeling_maetok import MAETokModel, MAETokPreTrainedModel
from .modeling_ola import OlaForConditionalGeneration, OlaModel, OlaPreTrainedModel, OryxViTModel
from .modeling_titok import TiTokModel, TiTokPreTrainedModel


def register() -> None:
    """Registers every vistok config and model with the Auto classes (idempotent)."""
    for config_class, model_class in (
        (TiTokConfig, TiTokModel), (FlexTokConfig, FlexTokModel), (MAETokConfig, MAETokModel)
    ):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
    register_ola()


def register_ola() -> None:
    from transformers import AutoModelForImageTextToText, AutoModelForMultimodalLM

    for config_class, model_class in ((OlaConfig, OlaModel), (OryxViTConfig, OryxViTModel), (BeatsConfig, BeatsModel)):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
    AutoModelForImageTextToText.register(OlaConfig, OlaForConditionalGeneration, exist_ok=True)
    AutoModelForMultimodalLM.register(OlaConfig, OlaForConditionalGeneration, exist_ok=True)


register()

__all__ = [
    "FLEXTOK_VAE_VARIANTS", "FLEXTOK_VARIANTS", "FlexTokConfig", "FlexTokModel", "FlexTokPreTrainedModel",
    "BeatsConfig", "BeatsModel", "OLA_VARIANTS", "OlaConfig", "OlaForConditionalGeneration", "OlaModel",
    "OlaPreTrainedModel", "OryxViTConfig", "OryxViTModel",
    "MAETOK_VARIANTS", "MAETokConfig", "MAETokModel", "MAETokPreTrainedModel",
    "TITOK_VARIANTS", "TiTokConfig", "TiTokModel", "TiTokPreTrainedModel"]
