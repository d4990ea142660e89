"""vistok models; importing this module registers them with transformers' Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_larp import LARP_AR_VARIANTS, LARP_PRIOR_PRESETS, LARP_VARIANTS, LARPARConfig, LARPConfig
from .configuration_flextok import FLEXTOK_VAE_VARIANTS, FLEXTOK_VARIANTS, FlexTokConfig
from .configuration_maetok import MAETOK_VARIANTS, MAETokConfig
from .configuration_titok import TITOK_VARIANTS, TiTokConfig
from .modeling_flextok import FlexTokModel, FlexTokPreTrainedModel
from .modeling_larp import LARPModel, LARPPreTrainedModel
from .modeling_larp_ar import LARPARForCausalLM, LARPARModel, LARPARPreTrainedModel
from .modeling_maetok import MAETokModel, MAETokPreTrainedModel
from .modeling_titok import TiTokModel, TiTokPreTrainedModel


def register() -> None:
    """Registers every vistok config and model with the Auto classes (idempotent)."""
    for config_class, model_class in (
        (TiTokConfig, TiTokModel), (FlexTokConfig, FlexTokModel), (MAETokConfig, MAETokModel),
        (LARPConfig, LARPModel),
        (LARPARConfig, LARPARModel),
    ):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
    AutoModelForCausalLM.register(LARPARConfig, LARPARForCausalLM, exist_ok=True)


register()

__all__ = [
    "LARP_AR_VARIANTS", "LARPARConfig", "LARPARForCausalLM", "LARPARModel", "LARPARPreTrainedModel",
    "LARP_PRIOR_PRESETS", "LARP_VARIANTS", "LARPConfig", "LARPModel", "LARPPreTrainedModel",
    "FLEXTOK_VAE_VARIANTS", "FLEXTOK_VARIANTS", "FlexTokConfig", "FlexTokModel", "FlexTokPreTrainedModel",
    "MAETOK_VARIANTS", "MAETokConfig", "MAETokModel", "MAETokPreTrainedModel",
    "TITOK_VARIANTS", "TiTokConfig", "TiTokModel", "TiTokPreTrainedModel"]
