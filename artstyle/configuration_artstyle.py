"""Configuration of the artstyle models (``model_type = "artstyle"``)."""

from __future__ import annotations

import copy
from functools import lru_cache

from transformers import PretrainedConfig

_POOLERS = ("cls", "fused", "fused_style", "gram_diag", "cls_gram_diag")
_SOFT_MODES = ("soft", "ascl")
_GRAM_LOSSES = ("mse", "infonce")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONFIG_PRESETS = ("tiny", "demo", "vit_small", "vit_base")  # ArtStyleConfig.from_preset names


@lru_cache(maxsize=32)
def backbone_depth_and_width(backbone: str, depth: int | None) -> tuple[int, int]:
    """Number of blocks and embedding width of a timm ViT, read from a meta-device instance (no memory, no download).

    Raises ``ValueError`` naming the ``backbone`` field when timm does not know the name or the model is not a ViT.
    """
    import timm
    import torch

    if not timm.is_model(backbone):
        raise ValueError(
            f"`backbone`: unknown timm model {backbone!r}; pick a ViT from timm.list_models('vit_*'), "
            "e.g. 'vit_tiny_patch16_224', 'vit_small_patch16_224' or 'vit_base_patch16_224'."
        )
    kwargs = {"num_classes": 0}
    if depth is not None:
        kwargs["depth"] = depth
    with torch.device("meta"):
        model = timm.create_model(backbone, pretrained=False, **kwargs)
    if not hasattr(model, "blocks") or not hasattr(model, "forward_intermediates"):
        raise ValueError(f"`backbone`: {backbone!r} is not a timm VisionTransformer "
                         "(needs blocks + forward_intermediates)")
    return len(model.blocks), int(model.embed_dim)


class ArtStyleConfig(PretrainedConfig):
    r"""Configuration of [`ArtStyleModel`], [`ArtStyleForPretraining`] and [`ArtStyleForImageClassification`].

    The method, its four components and their equations: docs/method.md. Which field switches each component on or
    off: `COMPONENTS`, `components`, `with_components`; the MoCo v3 baseline: `moco_v3_baseline()`.

    Backbone
        backbone (`str`, default `"vit_base_patch16_224"`): timm ViT name; built from scratch (no download).
        backbone_depth (`int | None`, default `None`): override of the number of blocks (None = timm's).
        backbone_pretrained (`str | None`, default `None`): timm name or local file (.safetensors/.pth) whose
            weights initialise a freshly built backbone (see `ArtStyleModel.load_backbone_weights`).
        image_size (`int`, default 224): input resolution. patch_size (`int`, default 16): ViT patch size.
        drop_path_rate (`float`, default 0.0): stochastic depth of the backbone.
        image_mean / image_std (`list[float]`, ImageNet statistics): normalisation of the image processor.
    Attention-guided layer fusion and layer-wise contrast (`layer_fusion.py`)
        fusion_layers (`list[int] | None`, default `None` = every block): block indices (negative allowed) whose CLS
            tokens are fused by self-attention across layers.
        fusion_num_heads (`int`, default 4): heads of the cross-layer attention and attention pooling.
        layer_head_dim (`int`, default 256): hidden width of the light per-layer projectors (layer-wise contrast).
    Learnable Gram matrix (`gram.py`)
        gram_layer (`int`, default -1): block whose patch tokens give the Gram matrix (negative allowed).
        gram_dim (`int`, default 64): channels C of the two learned maps; the Gram matrix is C×C.
        style_dim (`int`, default 256): width of the style vector projected from the flattened Gram matrix.
        gram_loss (`str`, default `"infonce"`): `"infonce"` (the two views' Gram matrices contrasted against the
            other images' teacher Gram matrices, temperature `tau_gram`: cannot collapse; our departure, chosen on
            the demo's validation split, see docs/method.md) or `"mse"` (the paper: squared error between the
            student's and the teacher's Gram matrices of the two views; it has a constant solution).
        tau_gram (`float`, default 0.2): temperature of `gram_loss="infonce"`.
    Representation
        pooler (`str`, default `"cls_gram_diag"`): the `pooler_output`: `"cls"` (the ViT's head input), `"fused"`
            (attention pooling of the fused layer tokens), `"fused_style"` (fused vector + Gram style vector,
            projected), `"gram_diag"` (the diagonal of the Gram matrix of block `gram_layer`'s patch tokens, i.e. each
            channel's mean squared activation, log-scaled and layer-normalised: a texture statistic with no
            projection) or `"cls_gram_diag"` (the CLS and that diagonal side by side, twice the width; the default,
            chosen on realart-dev validation, see docs/method.md). The two Gram-diagonal poolers are our addition and
            are read-outs: pretraining is the same as with `"cls"`.
    Heads, multi-layer self-distillation (`distillation.py`) and queue (`soft_contrast.py`)
        projection_dim (`int`, default 256): output width of projector G, predictor h and distillation heads.
        projection_hidden_dim (`int`, default 4096): hidden width of the MoCo v3 projector/predictor.
        distill_layers (`list[int] | None`, default `None` = every block): student blocks distilled from the teacher.
        distill_hidden_dim (`int`, default 256): hidden width of the light distillation heads.
        queue_size (`int`, default 4096): teacher keys kept as negatives; 0 = in-batch negatives (MoCo v3).
            Keep it well below the number of training images (e.g. ≤ 1/4 of it): a queue close to the dataset
            size holds older keys of the same image among its negatives.
    Temperatures and soft targets
        tau_student (`float`, default 0.2): temperature of the student logits of the soft contrast.
        tau_teacher (`float`, default 0.1): temperature of the teacher similarities that give the soft neighbours.
        tau_layerwise (`float`, default 0.2) / tau_distill (`float`, default 0.2): InfoNCE temperatures of the
            layer-wise contrast and of the multi-layer self-distillation. All temperatures are positive.
        soft_alpha (`float` in [0, 1], default 0.5): weight of the one-hot positive in the soft target (1 = InfoNCE).
        soft_mode (`str`, default `"soft"`): `"soft"` | `"ascl"` (neighbour mass scaled by teacher confidence).
    Loss weights (a weight of 0 switches the component off and skips its compute)
        weight_contrastive (`float`, default 1.0): soft contrast; weight_layerwise (0.5): layer-wise contrast;
            weight_distill (0.5): multi-layer self-distillation; weight_gram (1.0): Gram loss. All non-negative.
    Teacher
        momentum_base (`float`, default 0.99): EMA momentum of the teacher at step 0.
        momentum_final (`float`, default 1.0): EMA momentum at the end of the schedule (`momentum_base` ≤ it ≤ 1).
    Initialisation
        initializer_range (`float`, default 0.02): std of the truncated-normal init (position and layer embeddings,
            Linear layers through `PreTrainedModel`).
    """

    model_type = "artstyle"

    def __init__(
        self,
        backbone: str = "vit_base_patch16_224",
        backbone_depth: int | None = None,
        backbone_pretrained: str | None = None,
        image_size: int = 224,
        patch_size: int = 16,
        drop_path_rate: float = 0.0,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        fusion_layers: list[int] | None = None,
        fusion_num_heads: int = 4,
        layer_head_dim: int = 256,
        gram_layer: int = -1,
        gram_dim: int = 64,
        style_dim: int = 256,
        pooler: str = "cls_gram_diag",
        projection_dim: int = 256,
        projection_hidden_dim: int = 4096,
        distill_layers: list[int] | None = None,
        distill_hidden_dim: int = 256,
        queue_size: int = 4096,
        tau_student: float = 0.2,
        tau_teacher: float = 0.1,
        tau_layerwise: float = 0.2,
        tau_distill: float = 0.2,
        soft_alpha: float = 0.5,
        soft_mode: str = "soft",
        weight_contrastive: float = 1.0,
        weight_layerwise: float = 0.5,
        weight_distill: float = 0.5,
        weight_gram: float = 1.0,
        gram_loss: str = "infonce",
        tau_gram: float = 0.2,
        momentum_base: float = 0.99,
        momentum_final: float = 1.0,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.backbone = backbone
        self.backbone_depth = backbone_depth
        self.backbone_pretrained = backbone_pretrained
        self.image_size = image_size
        self.patch_size = patch_size
        self.drop_path_rate = drop_path_rate
        self.image_mean = list(image_mean) if image_mean is not None else list(IMAGENET_MEAN)
        self.image_std = list(image_std) if image_std is not None else list(IMAGENET_STD)
        self.fusion_layers = list(fusion_layers) if fusion_layers is not None else None
        self.fusion_num_heads = fusion_num_heads
        self.layer_head_dim = layer_head_dim
        self.gram_layer = gram_layer
        self.gram_dim = gram_dim
        self.style_dim = style_dim
        self.pooler = pooler
        self.projection_dim = projection_dim
        self.projection_hidden_dim = projection_hidden_dim
        self.distill_layers = list(distill_layers) if distill_layers is not None else None
        self.distill_hidden_dim = distill_hidden_dim
        self.queue_size = queue_size
        self.tau_student = tau_student
        self.tau_teacher = tau_teacher
        self.tau_layerwise = tau_layerwise
        self.tau_distill = tau_distill
        self.soft_alpha = soft_alpha
        self.soft_mode = soft_mode
        self.weight_contrastive = weight_contrastive
        self.weight_layerwise = weight_layerwise
        self.weight_distill = weight_distill
        self.weight_gram = weight_gram
        self.gram_loss = gram_loss
        self.tau_gram = tau_gram
        self.momentum_base = momentum_base
        self.momentum_final = momentum_final
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self.validate_artstyle()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """A saved config without ``gram_loss`` predates the field: its model was trained with the paper's Gram MSE,
        so it loads as ``gram_loss="mse"`` (continuing its pretraining keeps its loss); new configs default to
        ``"infonce"``."""
        if "gram_loss" not in config_dict:
            config_dict = {**config_dict, "gram_loss": "mse"}
        return super().from_dict(config_dict, **kwargs)

    # ------------------------------------------------------------------ validation and derived values
    def validate_artstyle(self) -> None:
        """Check every field; raise ``ValueError`` naming the first bad one."""
        for name in ("tau_student", "tau_teacher", "tau_layerwise", "tau_distill", "tau_gram"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"`{name}` must be a positive number, got {value!r}")
        if not 0.0 <= float(self.soft_alpha) <= 1.0:
            raise ValueError(f"`soft_alpha` must lie in [0, 1], got {self.soft_alpha!r}")
        if self.soft_mode not in _SOFT_MODES:
            raise ValueError(f"`soft_mode` must be one of {_SOFT_MODES}, got {self.soft_mode!r}")
        if self.gram_loss not in _GRAM_LOSSES:
            raise ValueError(f"`gram_loss` must be one of {_GRAM_LOSSES}, got {self.gram_loss!r}")
        if self.pooler not in _POOLERS:
            raise ValueError(f"`pooler` must be one of {_POOLERS}, got {self.pooler!r}")
        for name in ("weight_contrastive", "weight_layerwise", "weight_distill", "weight_gram"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative number, got {value!r}")
        if not isinstance(self.queue_size, int) or self.queue_size < 0:
            raise ValueError(f"`queue_size` must be a non-negative integer, got {self.queue_size!r}")
        for name in ("gram_dim", "style_dim", "projection_dim", "projection_hidden_dim", "layer_head_dim",
                     "distill_hidden_dim", "fusion_num_heads", "image_size", "patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer (>= 1), got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"`image_size` ({self.image_size}) must be divisible by `patch_size` ({self.patch_size})")
        if not 0.0 <= float(self.drop_path_rate) < 1.0:
            raise ValueError(f"`drop_path_rate` must lie in [0, 1), got {self.drop_path_rate!r}")
        if not 0.0 <= float(self.momentum_base) <= float(self.momentum_final) <= 1.0:
            raise ValueError(
                f"`momentum_base` ({self.momentum_base}) and `momentum_final` ({self.momentum_final}) must satisfy "
                "0 <= momentum_base <= momentum_final <= 1"
            )
        if self.backbone_depth is not None and (not isinstance(self.backbone_depth, int) or self.backbone_depth < 1):
            raise ValueError(f"`backbone_depth` must be a positive integer or None, got {self.backbone_depth!r}")
        depth, width = backbone_depth_and_width(self.backbone, self.backbone_depth)
        for name in ("fusion_layers", "distill_layers"):
            layers = getattr(self, name)
            if layers is None:
                continue
            if len(layers) == 0:
                raise ValueError(f"`{name}` must name at least one block (or be None for every block)")
            self._check_layers(name, layers, depth)
        self._check_layers("gram_layer", [self.gram_layer], depth)
        if width % self.fusion_num_heads:
            raise ValueError(f"`fusion_num_heads` ({self.fusion_num_heads}) must divide the backbone width ({width})")

    @staticmethod
    def _check_layers(name: str, layers: list[int], depth: int) -> None:
        for index in layers:
            if not isinstance(index, int) or not -depth <= index < depth:
                raise ValueError(f"`{name}`: block index {index!r} is outside the backbone depth {depth} "
                                 f"(valid: {-depth}..{depth - 1})")
        resolved = [i % depth for i in layers]
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"`{name}` names the same block twice: {layers}")

    @property
    def num_blocks(self) -> int:
        return backbone_depth_and_width(self.backbone, self.backbone_depth)[0]

    @property
    def hidden_size(self) -> int:
        return backbone_depth_and_width(self.backbone, self.backbone_depth)[1]

    def resolved_fusion_layers(self) -> list[int]:
        """Block indices of the fusion, non-negative and sorted."""
        return self._resolve(self.fusion_layers)

    def resolved_distill_layers(self) -> list[int]:
        return self._resolve(self.distill_layers)

    def resolved_gram_layer(self) -> int:
        return self.gram_layer % self.num_blocks

    def _resolve(self, layers: list[int] | None) -> list[int]:
        depth = self.num_blocks
        return list(range(depth)) if layers is None else sorted(i % depth for i in layers)

    @property
    def uses_fusion(self) -> bool:
        """The layer fusion exists when the layer-wise contrast or the pooler needs it."""
        return self.weight_layerwise > 0 or self.pooler in ("fused", "fused_style")

    @property
    def uses_gram(self) -> bool:
        return self.weight_gram > 0 or self.pooler == "fused_style"

    # ------------------------------------------------------------------ presets
    @classmethod
    def tiny(cls, **overrides) -> ArtStyleConfig:
        """ViT-tiny, 64 px, patch 8 (64 tokens): for tests and the demo on CPU."""
        return cls(**{**dict(
            backbone="vit_tiny_patch16_224", image_size=64, patch_size=8, fusion_num_heads=3, layer_head_dim=128,
            gram_dim=32, style_dim=128, projection_dim=128, projection_hidden_dim=512, distill_hidden_dim=128,
            queue_size=1024,
        ), **overrides})

    @classmethod
    def demo(cls, **overrides) -> ArtStyleConfig:
        """The built-in demo's model on 2 CPU cores: the `tiny` preset's heads, 64 px, patch 8, on timm's
        ``test_vit3`` (96-dim, 9 blocks, 3 heads, 0.8 M parameters; ViT-tiny has 5.5 M). About four times
        cheaper per step than `tiny`, so the demo's few CPU minutes buy 416 pretraining steps instead of 104:
        README.md, "Does pretraining help on the demo?". timm builds ``test_vit3`` with one register token instead
        of a class token, LayerScale (init 1e-5) and an attention-pooling head (``global_pool="map"``); the "CLS"
        read-out is the backbone's own ``forward_head``, so under this preset it is that attention-pooled vector."""
        return cls.tiny(**{"backbone": "test_vit3", **overrides})

    @classmethod
    def vit_small(cls, **overrides) -> ArtStyleConfig:
        """Paper scale, ViT-S/16 at 224 px (MoCo v3 head sizes)."""
        return cls(**{**dict(backbone="vit_small_patch16_224", image_size=224, patch_size=16, fusion_num_heads=6,
                             drop_path_rate=0.1), **overrides})

    @classmethod
    def vit_base(cls, **overrides) -> ArtStyleConfig:
        """Paper scale, ViT-B/16 at 224 px (MoCo v3 head sizes)."""
        return cls(**{**dict(backbone="vit_base_patch16_224", image_size=224, patch_size=16, fusion_num_heads=8,
                             drop_path_rate=0.1), **overrides})

    @classmethod
    def from_preset(cls, name: str, **overrides) -> ArtStyleConfig:
        """The named preset (one of `CONFIG_PRESETS`) with ``overrides`` applied."""
        if name not in CONFIG_PRESETS:
            raise ValueError(f"`config_preset`: unknown preset {name!r}; choose one of {sorted(CONFIG_PRESETS)}")
        return getattr(cls, name)(**overrides)

    # ------------------------------------------------------------------ components (the one source of truth)
    @property
    def components(self) -> dict[str, bool]:
        """Which of the paper's four components are switched on, by name (see ``COMPONENTS``)."""
        return {name: getattr(self, field) != off for name, (field, off) in COMPONENTS.items()}

    def with_components(self, reference: ArtStyleConfig | None = None, **switches: bool) -> ArtStyleConfig:
        """A copy with the named components switched on or off, e.g. ``config.with_components(gram=False)``.

        Off sets the component's field to its "off" value (weight 0, ``soft_alpha`` 1). On keeps the current value
        when it is already on, else takes the value of ``reference`` (default: this config's class defaults).
        Unknown names raise ``ValueError``.
        """
        unknown = sorted(set(switches) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown component(s) {unknown}; choose from {list(COMPONENTS)}")
        other = copy.deepcopy(self)
        for name, on in switches.items():
            field, off = COMPONENTS[name]
            if not on:
                setattr(other, field, off)
            elif getattr(other, field) == off:
                value = getattr(reference, field) if reference is not None else _default_of(field)
                if value == off:
                    raise ValueError(f"cannot switch `{name}` on: the reference value of `{field}` is its off value "
                                     f"{off!r}")
                setattr(other, field, value)
        other.validate_artstyle()
        return other

    def moco_v3_baseline(self) -> ArtStyleConfig:
        """A copy with the MoCo v3 baseline settings: every component off (hard contrast only), CLS pooler."""
        other = self.with_components(**{name: False for name in COMPONENTS})
        other.pooler = "cls"
        other.validate_artstyle()
        return other


# component name -> (config field that switches it, the field's "off" value)
COMPONENTS: dict[str, tuple[str, float]] = {
    "layerwise": ("weight_layerwise", 0.0),  # attention-guided layer fusion + layer-wise contrast
    "distill": ("weight_distill", 0.0),  # multi-layer self-distillation
    "soft": ("soft_alpha", 1.0),  # similarity-aware soft contrast (1.0 = hard InfoNCE)
    "gram": ("weight_gram", 0.0),  # learnable Gram matrix
}


def _default_of(field: str):
    import inspect

    return inspect.signature(ArtStyleConfig.__init__).parameters[field].default

__all__ = ["ArtStyleConfig", "COMPONENTS"]
