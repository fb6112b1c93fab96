"""Former home of the fusion and Gram modules, kept so ``artstyle.fusion`` imports keep working.

The attention-guided layer fusion is in ``layer_fusion.py``, the learnable Gram matrix in ``gram.py``
(see docs/method.md).
"""

from .gram import LearnableGram
from .layer_fusion import AttentionLayerFusion, LayerNormPerLayer

__all__ = ["AttentionLayerFusion", "LayerNormPerLayer", "LearnableGram"]
