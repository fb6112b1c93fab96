"""artstyle: self-supervised art-style representations as Hugging Face models.

Importing the package registers the ``artstyle`` model type with the Auto classes, and marks the classes for
``register_for_auto_class`` so that ``save_pretrained`` writes an ``auto_map`` and copies the code (a saved folder
then loads with ``trust_remote_code=True`` where this package is not installed).
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from .configuration_artstyle import CONFIG_PRESETS, ArtStyleConfig
from .modeling_artstyle import (
    ArtStyleForImageClassification,
    ArtStyleForPretraining,
    ArtStyleModel,
    ArtStyleModelOutput,
    ArtStylePreTrainedModel,
    ArtStylePretrainingOutput,
)
from .processing import build_image_processor

__version__ = "0.1.0"

AutoConfig.register("artstyle", ArtStyleConfig, exist_ok=True)
AutoModel.register(ArtStyleConfig, ArtStyleModel, exist_ok=True)
AutoModelForPreTraining.register(ArtStyleConfig, ArtStyleForPretraining, exist_ok=True)
AutoModelForImageClassification.register(ArtStyleConfig, ArtStyleForImageClassification, exist_ok=True)

ArtStyleConfig.register_for_auto_class()
ArtStyleModel.register_for_auto_class("AutoModel")
ArtStyleForPretraining.register_for_auto_class("AutoModelForPreTraining")
ArtStyleForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "CONFIG_PRESETS",
    "ArtStyleConfig",
    "ArtStyleModel",
    "ArtStyleForPretraining",
    "ArtStyleForImageClassification",
    "ArtStyleModelOutput",
    "ArtStylePretrainingOutput",
    "ArtStylePreTrainedModel",
    "build_image_processor",
    "__version__",
]
