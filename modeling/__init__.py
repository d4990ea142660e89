"""vistok models; importing this module registers them with transformers' Auto classes."""

from transformers import AutoConfig, AutoModel, Emu3VQVAEConfig

from .configuration_larp import LARP_PRIOR_PRESETS, LARP_VARIANTS, LARPConfig
from .configuration_flextok import FLEXTOK_VAE_VARIANTS, FLEXTOK_VARIANTS, FlexTokConfig
from .configuration_maetok import MAETOK_VARIANTS, MAETokConfig
from .configuration_titok import TITOK_VARIANTS, TiTokConfig
from .modeling_flextok import FlexTokModel, FlexTokPreTrainedModel
from .modeling_emu3 import Emu3VisionTokenizer
from .modeling_larp import LARPModel, LARPPreTrainedModel
from .modeling_maetok import MAETokModel, MAETokPreTrainedModel
from .modeling_titok import TiTokModel, TiTokPreTrainedModel


def register() -> None:
    """Registers every vistok config and model with the Auto classes (idempotent)."""
    for config_class, model_class in (
        (TiTokConfig, TiTokModel), (FlexTokConfig, FlexTokModel), (MAETokConfig, MAETokModel),
        (LARPConfig, LARPModel),
    ):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
    # Emu3: transformers' own config (model type `emu3_vqgan`), which has no AutoModel entry of its own
    AutoModel.register(Emu3VQVAEConfig, Emu3VisionTokenizer, exist_ok=True)


register()

__all__ = [
    "Emu3VisionTokenizer",
    "LARP_PRIOR_PRESETS", "LARP_VARIANTS", "LARPConfig", "LARPModel", "LARPPreTrainedModel",
    "FLEXTOK_VAE_VARIANTS", "FLEXTOK_VARIANTS", "FlexTokConfig", "FlexTokModel", "FlexTokPreTrainedModel",
    "MAETOK_VARIANTS", "MAETokConfig", "MAETokModel", "MAETokPreTrainedModel",
    "TITOK_VARIANTS", "TiTokConfig", "TiTokModel", "TiTokPreTrainedModel"]
