"""artstyle models: a timm ViT with attention-guided layer fusion and a learnable Gram style module, its
self-supervised pretraining wrapper (momentum teacher + the four components of docs/method.md) and an image classifier.

Reads top-down: backbone → encoder outputs → pretrained base → base model → pretraining → classification. Each
component (its parameters' classes, forward and loss) lives in its own sibling module: ``layer_fusion.py``,
``distillation.py``, ``soft_contrast.py``, ``gram.py``; ``ArtStyleForPretraining`` only wires them.
Imports only torch / transformers / timm and sibling modules (relative), so a saved folder loads with
``trust_remote_code=True`` where the ``artstyle`` package is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput

from .configuration_artstyle import ArtStyleConfig
from .distillation import MultiLayerSelfDistillation
from .gram import GramContrastiveLoss, GramMSELoss, LearnableGram
from .heads import PerLayerMLP, PredictorHead, ProjectorHead
from .layer_fusion import AttentionLayerFusion, LayerNormPerLayer, LayerwiseContrast
from .losses import gather_from_all
from .soft_contrast import SoftContrastiveLoss, enqueue_keys, queue_snapshot


# ---------------------------------------------------------------------------------------------- backbone
def build_backbone(config: ArtStyleConfig) -> VisionTransformer:
    """The timm ViT of ``config``, built from scratch (never downloads); classifier head removed."""
    kwargs = dict(num_classes=0, img_size=config.image_size, patch_size=config.patch_size,
                  drop_path_rate=config.drop_path_rate)
    if config.backbone_depth is not None:
        kwargs["depth"] = config.backbone_depth
    return timm.create_model(config.backbone, pretrained=False, **kwargs)


# ---------------------------------------------------------------------------------------------- outputs
@dataclass
class ArtStyleModelOutput(ModelOutput):
    """Output of [`ArtStyleModel`].

    last_hidden_state (`[B, N, D]`): final normalised tokens of the ViT (prefix tokens first).
    pooler_output (`[B, D]`): the representation chosen by `config.pooler` (classification, features, search).
    style_embedding (`[B, style_dim]`): style vector of the learnable Gram module (pooler `"fused_style"` only).
    fusion_weights (`[B, L, L]`): cross-layer attention weights of the fusion (row = attending layer).
    fusion_pool_weights (`[B, L]`): which layers the attention pooling drew on (pooler `"fused"`/`"fused_style"`).
    gram (`[B, C, C]`): normalised learnable Gram matrix (when the Gram module exists).
    hidden_states (tuple of `[B, N, D]`): every block's output, when `output_hidden_states=True`.
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    style_embedding: torch.Tensor | None = None
    fusion_weights: torch.Tensor | None = None
    fusion_pool_weights: torch.Tensor | None = None
    gram: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class ArtStylePretrainingOutput(ModelOutput):
    """Output of [`ArtStyleForPretraining`]: the weighted total and every term (float32 scalars; 0 when off).

    loss: total; loss_contrastive: similarity-aware soft contrast (queue); loss_layerwise: attention-guided layer-wise
    contrast; loss_distill: multi-layer self-distillation; loss_gram: Gram loss (MSE or InfoNCE, `config.gram_loss`).
    pooler_output (`[B, D]`): student representation of the first view (for monitoring).
    fusion_pool_weights / fusion_weights: student attention weights of the first view (for plots).
    """

    loss: torch.Tensor | None = None
    loss_contrastive: torch.Tensor | None = None
    loss_layerwise: torch.Tensor | None = None
    loss_distill: torch.Tensor | None = None
    loss_gram: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    fusion_weights: torch.Tensor | None = None
    fusion_pool_weights: torch.Tensor | None = None


_GRAM_DIAG_POOLERS = ("gram_diag", "cls_gram_diag")  # read-outs of the patch tokens' Gram diagonal


@dataclass
class _Encoded:
    """Everything one backbone pass yields, internal to this file."""

    output: ArtStyleModelOutput
    layer_cls: dict[int, torch.Tensor]  # block index → CLS token [B, D] (pre-norm block output)
    fused: torch.Tensor | None  # [B, L_fusion, D]
    contrast_input: torch.Tensor | None = None  # what the contrastive projector reads (see `encode`)


def _split_encoded(encoded: _Encoded, parts: int) -> list[_Encoded]:
    """Split an `_Encoded` of ``parts`` concatenated equal batches into one per batch (every tensor is batch-first)."""

    def split(value):
        if value is None:
            return [None] * parts
        if isinstance(value, tuple):
            return list(zip(*(split(item) for item in value)))
        return list(value.chunk(parts, dim=0))

    fields = {key: split(value) for key, value in encoded.output.items()}
    layer_cls = {index: split(value) for index, value in encoded.layer_cls.items()}
    fused, contrast = split(encoded.fused), split(encoded.contrast_input)
    return [_Encoded(output=ArtStyleModelOutput(**{key: value[i] for key, value in fields.items()}),
                     layer_cls={index: value[i] for index, value in layer_cls.items()}, fused=fused[i],
                     contrast_input=contrast[i]) for i in range(parts)]


# ---------------------------------------------------------------------------------------------- base class
class ArtStylePreTrainedModel(PreTrainedModel):
    config_class = ArtStyleConfig
    config: ArtStyleConfig
    base_model_prefix = "artstyle"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["ArtStyleModel"]
    _supports_sdpa = True
    # a pretraining checkpoint also holds the teacher, heads and queue: loading its encoder elsewhere ignores them
    _keys_to_ignore_on_load_unexpected = [r"^teacher\.", r"^projector\.", r"^predictor\.", r"^layer_projector\.",
                                          r"^distill_", r"^queue", r"^classifier\."]
    _auto_map = {
        "AutoConfig": "configuration_artstyle.ArtStyleConfig",
        "AutoModel": "modeling_artstyle.ArtStyleModel",
        "AutoModelForPreTraining": "modeling_artstyle.ArtStyleForPretraining",
        "AutoModelForImageClassification": "modeling_artstyle.ArtStyleForImageClassification",
    }

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained`` (safetensors) with an ``auto_map`` naming every artstyle class, so the
        folder of any of the three models loads through any of the Auto classes with ``trust_remote_code=True``."""
        if kwargs.get("safe_serialization") is False:
            raise ValueError("artstyle checkpoints are saved as safetensors only (`safe_serialization=False` given)")
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self._auto_map}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, VisionTransformer):
            if module.pos_embed is not None:
                init.trunc_normal_(module.pos_embed, std=std)
            if module.cls_token is not None:
                init.normal_(module.cls_token, std=1e-6)
            if getattr(module, "reg_token", None) is not None:
                init.normal_(module.reg_token, std=1e-6)
        elif isinstance(module, PerLayerMLP):
            for weight in (module.weight1, module.weight2):
                init.trunc_normal_(weight, std=weight.shape[1] ** -0.5)
            init.zeros_(module.bias1)
            init.zeros_(module.bias2)
        elif isinstance(module, LayerNormPerLayer):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, AttentionLayerFusion):
            init.trunc_normal_(module.layer_embedding, std=std)
            if module.pool_query is not None:
                init.trunc_normal_(module.pool_query, std=std)
        elif isinstance(module, ArtStyleForPretraining) and module.queue is not None:
            init.copy_(module.queue, F.normalize(torch.randn_like(module.queue, device="cpu"), dim=1))
            init.zeros_(module.queue_ptr)


# ---------------------------------------------------------------------------------------------- base model
class ArtStyleModel(ArtStylePreTrainedModel):
    """ViT backbone + attention-guided layer fusion + learnable Gram module → ``pooler_output`` (docs/method.md).

    The backbone runs ONCE per call (timm ``forward_intermediates``); fusion and Gram read its hidden states.
    """

    def __init__(self, config: ArtStyleConfig):
        super().__init__(config)
        self.backbone = build_backbone(config)
        dim = self.backbone.embed_dim
        self.fusion_layers = config.resolved_fusion_layers()
        self.gram_layer = config.resolved_gram_layer()
        fused_pooler = config.pooler in ("fused", "fused_style")
        self.fusion = (AttentionLayerFusion(len(self.fusion_layers), dim, config.fusion_num_heads, fused_pooler)
                       if config.uses_fusion else None)
        style_dim = config.style_dim if config.pooler == "fused_style" else None
        self.gram = LearnableGram(dim, config.gram_dim, style_dim) if config.uses_gram else None
        if config.pooler == "fused_style":
            self.pooler_norm = nn.LayerNorm(dim + config.style_dim, eps=1e-6)
            self.pooler_proj = nn.Linear(dim + config.style_dim, dim)
        elif config.pooler in _GRAM_DIAG_POOLERS:
            self.pooler_norm = nn.LayerNorm(dim, eps=1e-6)
        self.post_init()
        if config.backbone_pretrained and self.backbone.pos_embed.device.type != "meta":
            self.load_backbone_weights(config.backbone_pretrained)  # fresh models only; from_pretrained loads its own

    @property
    def hidden_size(self) -> int:
        return self.backbone.embed_dim

    @property
    def pooler_dim(self) -> int:
        """Width of ``pooler_output``: the ViT width, twice it for `"cls_gram_diag"` (CLS ‖ Gram diagonal)."""
        return 2 * self.backbone.embed_dim if self.config.pooler == "cls_gram_diag" else self.backbone.embed_dim

    def freeze_unused(self, used_by_losses: bool) -> None:
        """Freeze parameters that never reach ``pooler_output`` (nor a loss, when ``used_by_losses``): they would get
        no gradient, which DDP rejects. Frozen parameters keep their values, so checkpoints round-trip."""
        unused = []
        if self.config.pooler in ("fused", "fused_style") or (self.config.pooler == "gram_diag" and not used_by_losses):
            unused += [self.backbone.norm, self.backbone.fc_norm]  # these poolers read pre-norm block outputs
        if not used_by_losses:
            if self.config.pooler not in ("fused", "fused_style"):
                unused.append(self.fusion)
            if self.config.pooler != "fused_style":
                unused.append(self.gram)
        if used_by_losses and self.config.pooler in _GRAM_DIAG_POOLERS:
            unused.append(self.pooler_norm)  # a read-out: no pretraining loss reads it (the projector reads the CLS)
        for module in unused:
            if module is not None:
                module.requires_grad_(False)

    def load_backbone_weights(self, source: str) -> None:
        """Initialise the backbone from timm pretrained weights: a timm model name (downloads through timm, needs the
        Hub) or a local ``.safetensors`` / ``.pth`` file holding a timm ViT state dict. Position embeddings are
        resampled to ``image_size`` by timm; a classifier head in the file is ignored.
        """
        import os

        from timm.models import load_checkpoint

        if os.path.isfile(source):
            load_checkpoint(self.backbone, source, strict=False, filter_fn=_timm_checkpoint_filter(self.backbone))
            return
        if os.path.sep in source or source.endswith((".pth", ".safetensors", ".bin")):
            raise FileNotFoundError(f"`backbone_pretrained`: file {source!r} does not exist")
        kwargs = dict(num_classes=0, img_size=self.config.image_size, patch_size=self.config.patch_size)
        if self.config.backbone_depth is not None:
            kwargs["depth"] = self.config.backbone_depth
        pretrained = timm.create_model(source, pretrained=True, **kwargs)
        self.backbone.load_state_dict(pretrained.state_dict())

    def encode(self, pixel_values: torch.Tensor, extra_layers: tuple[int, ...] = (),
               output_hidden_states: bool = False, pooler_only: bool = False, read_out: bool = True) -> _Encoded:
        """One backbone pass; the CLS tokens of ``extra_layers`` are returned for the pretraining heads.

        ``pooler_only``: skip the fusion / Gram modules the pooler does not read (classification, inference).
        ``read_out=False``: skip the Gram-diagonal read-out of the `"gram_diag"` / `"cls_gram_diag"` poolers
        (``pooler_output`` is then None): no loss reads it, so the pretraining teacher does not compute it.
        """
        backbone = self.backbone
        fused_pooler = self.config.pooler in ("fused", "fused_style")
        use_fusion = self.fusion is not None and not (pooler_only and not fused_pooler)
        use_gram = self.gram is not None and not (pooler_only and self.config.pooler != "fused_style")
        wanted = set(extra_layers)
        if use_fusion:
            wanted.update(self.fusion_layers)
        if use_gram or self.config.pooler in _GRAM_DIAG_POOLERS:
            wanted.add(self.gram_layer)
        if output_hidden_states:
            wanted.update(range(len(backbone.blocks)))
        if wanted:
            indices = sorted(wanted)
            final, intermediates = backbone.forward_intermediates(
                pixel_values, indices=indices, return_prefix_tokens=True, output_fmt="NLC")
            by_layer = dict(zip(indices, intermediates))  # index → (patch tokens, prefix tokens)
        else:
            final, by_layer = backbone.forward_features(pixel_values), {}
        layer_cls = {index: prefix[:, 0] for index, (_, prefix) in by_layer.items()}

        output = ArtStyleModelOutput(last_hidden_state=final)
        fused = pooled_fused = None
        if use_fusion:
            layer_tokens = torch.stack([layer_cls[i] for i in self.fusion_layers], dim=1)
            fused, output.fusion_weights, pooled_fused, output.fusion_pool_weights = self.fusion(layer_tokens)
        if use_gram:
            output.gram, output.style_embedding = self.gram(by_layer[self.gram_layer][0])
        # The CLS head input, computed once: the "cls" pooler, and the projector's input under the Gram-diagonal
        # poolers, which are read-outs only (pretraining is the same as with "cls").
        pooler = self.config.pooler
        cls_head = (backbone.forward_head(final, pre_logits=True)
                    if pooler in ("cls", "cls_gram_diag") or (pooler == "gram_diag" and not pooler_only) else None)
        if pooler == "cls":
            output.pooler_output = cls_head
        elif pooler == "fused":
            output.pooler_output = pooled_fused
        elif pooler in _GRAM_DIAG_POOLERS and not read_out:
            output.pooler_output = None
        elif pooler in _GRAM_DIAG_POOLERS:
            diag = self.pool_gram_diag(by_layer[self.gram_layer][0])
            output.pooler_output = diag if pooler == "gram_diag" else torch.cat([cls_head, diag], dim=-1)
        else:
            style = output.style_embedding.to(pooled_fused.dtype)
            output.pooler_output = self.pooler_proj(self.pooler_norm(torch.cat([pooled_fused, style], dim=-1)))
        contrast_input = cls_head if pooler in _GRAM_DIAG_POOLERS else output.pooler_output
        if output_hidden_states:
            output.hidden_states = tuple(torch.cat([by_layer[i][1], by_layer[i][0]], dim=1)
                                         for i in range(len(backbone.blocks)))
        return _Encoded(output=output, layer_cls=layer_cls, fused=fused, contrast_input=contrast_input)

    def pool_gram_diag(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """The `"gram_diag"` pooler: ``LayerNorm(log(diag(TᵀT / N) + 1e-6))`` for the patch tokens ``T`` ``[B, N, D]``
        of block `gram_layer` (pre-norm), i.e. the log of each channel's mean squared activation. The squares are
        taken in float32; the result has the tokens' dtype."""
        energy = patch_tokens.float().pow(2).mean(dim=1)
        return self.pooler_norm(torch.log(energy + 1e-6).to(patch_tokens.dtype))

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs) -> ArtStyleModelOutput:
        encoded = self.encode(pixel_values, output_hidden_states=bool(output_hidden_states))
        return encoded.output if return_dict is not False else encoded.output.to_tuple()


def _timm_checkpoint_filter(backbone: VisionTransformer):
    """Drop classifier weights and resample position embeddings of a timm checkpoint to ``backbone``."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    def filter_fn(state_dict, model):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
        return checkpoint_filter_fn(state_dict, backbone)

    return filter_fn


# ---------------------------------------------------------------------------------------------- pretraining
@dataclass
class _View:
    """What one view contributes to the losses (student or teacher; ``None`` where that term is off)."""

    output: ArtStyleModelOutput
    key: torch.Tensor | None = None  # [B, P] student prediction q / teacher key p, normalised float32
    layers: torch.Tensor | None = None  # [L, B, P] layer-wise contrast embeddings
    distill: torch.Tensor | None = None  # [L, B, P] distillation predictions (student only)
    gram: torch.Tensor | None = None  # [B, C, C]


@dataclass
class _GatheredKeys:
    """Teacher keys of one view gathered over processes; this process's rows start at ``offset``."""

    keys: torch.Tensor | None = None
    offset: int = 0


class ArtStyleForPretraining(ArtStylePreTrainedModel):
    """Self-supervised pretraining of [`ArtStyleModel`] (docs/method.md): student, momentum teacher, heads, queue.

    ``forward(pixel_values, pixel_values_2, momentum)``: optional EMA update of the teacher, ONE backbone pass over
    both views (concatenated) for the student and one for the teacher (no grad), the heads per view, every enabled
    loss computed symmetrically, then (training mode) the gathered teacher keys of the second view are enqueued.
    Losses are float32 whatever the autocast dtype.

    The components (docs/method.md) are wired here; their parameters sit at the attribute paths of the checkpoint
    format: ``artstyle.fusion`` / ``artstyle.gram`` (in the encoder), ``projector`` + ``predictor`` (MoCo v3 heads),
    ``layer_projector`` (layer-wise contrast), ``distill_projector`` + ``distill_predictor`` (distillation),
    ``queue`` + ``queue_ptr`` (soft-contrast queue) and ``teacher.*`` (twins of what sees the teacher's input).
    """

    _keys_to_ignore_on_load_unexpected = [r"^classifier\."]  # initialising pretraining from a classifier

    def __init__(self, config: ArtStyleConfig):
        super().__init__(config)
        self.artstyle = ArtStyleModel(config)
        dim, proj = self.artstyle.hidden_size, config.projection_dim
        self.fusion_layers = config.resolved_fusion_layers()
        self.distill_layers = config.resolved_distill_layers()
        self.projector = ProjectorHead(dim, config.projection_hidden_dim, proj)
        self.predictor = PredictorHead(proj, config.projection_hidden_dim)
        layerwise = config.weight_layerwise > 0

        def layerwise_head():
            return LayerwiseContrast(len(self.fusion_layers), dim, config.layer_head_dim, proj, config.tau_layerwise)

        self.layer_projector = layerwise_head() if layerwise else None
        if config.weight_distill > 0:
            self.distill_projector, self.distill_predictor = MultiLayerSelfDistillation.build_heads(
                len(self.distill_layers), dim, config.distill_hidden_dim, proj)
        else:
            self.distill_projector = self.distill_predictor = None
        # the teacher twins every student part that sees the teacher's input; predictor and distill heads have none
        teacher = {"artstyle": ArtStyleModel(config), "projector": ProjectorHead(dim, config.projection_hidden_dim,
                                                                                   proj)}
        if layerwise:
            teacher["layer_projector"] = layerwise_head()
        self.teacher = nn.ModuleDict(teacher)
        self.teacher.requires_grad_(False)
        self.artstyle.freeze_unused(used_by_losses=True)
        # the soft contrast's key queue (soft_contrast.KeyQueue semantics), kept as this model's own buffers so that
        # checkpoints hold them as `queue` / `queue_ptr`
        if config.queue_size > 0:
            self.register_buffer("queue", F.normalize(torch.randn(config.queue_size, proj), dim=1))
        else:
            self.queue = None
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

        self.soft_contrastive = SoftContrastiveLoss(config.tau_student, config.tau_teacher, config.soft_alpha,
                                                    config.soft_mode)
        self.distillation = MultiLayerSelfDistillation(self.distill_layers, config.tau_distill)
        self.gram_mse = GramMSELoss()
        self.gram_nce = GramContrastiveLoss(config.tau_gram)
        self.post_init()
        self.copy_student_to_teacher()

    # -------------------------------------------------------------------------------------------- teacher
    def _student_teacher_pairs(self):
        for name, teacher_module in self.teacher.items():
            yield getattr(self, name), teacher_module

    @torch.no_grad()
    def copy_student_to_teacher(self) -> None:
        """Teacher := student (at construction, and after loading a checkpoint without teacher weights)."""
        for student, teacher in self._student_teacher_pairs():
            for s, t in zip(student.parameters(), teacher.parameters()):
                if s.device.type != "meta":
                    t.copy_(s)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA: ``teacher = momentum·teacher + (1 - momentum)·student``, every twin module at once."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must lie in [0, 1], got {momentum}")
        teacher_params, student_params = [], []
        for student, teacher in self._student_teacher_pairs():
            teacher_params += list(teacher.parameters())
            student_params += [p.detach() for p in student.parameters()]
        torch._foreach_lerp_(teacher_params, student_params, 1.0 - momentum)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher["artstyle"].eval()  # no drop path / dropout in the teacher backbone; heads keep batch-stat BN
        return self

    # -------------------------------------------------------------------------------------------- per view
    def _views(self, views: tuple[torch.Tensor, ...], *, teacher: bool) -> list[_View]:
        """What every view contributes to the losses, for the student (or the teacher).

        ONE backbone pass over all views: they are concatenated along the batch, encoded, and split again. Everything
        in `ArtStyleModel.encode` is per-sample (ViT blocks, LayerNorms, fusion attention across one image's layers,
        Gram matrices), and so are the per-layer heads of the layer-wise contrast and the distillation, which also
        run once on the concatenated batch. This equals one pass per view up to float rounding, with a fraction of
        the kernel launches, which is what bounds a small model's step. Only the MoCo heads (BatchNorm: statistics
        per view, as in MoCo v3) run once per view.
        """
        config = self.config
        encoder = self.teacher["artstyle"] if teacher else self.artstyle
        distill = not teacher and self.distill_projector is not None
        extra = tuple(self.distill_layers) if distill else ()
        count = len(views)
        # the teacher's pooler read-out feeds no loss; the student's is returned (`pooler_output`)
        encoded = encoder.encode(views[0] if count == 1 else torch.cat(views), extra_layers=extra,
                                 read_out=not teacher)
        parts = [encoded] if count == 1 else _split_encoded(encoded, count)
        results = [_View(output=part.output) for part in parts]
        if config.weight_contrastive > 0 or (teacher and config.weight_distill > 0):
            projector = self.teacher["projector"] if teacher else self.projector
            for result, part in zip(results, parts):
                z = projector(part.contrast_input)
                result.key = F.normalize((z if teacher else self.predictor(z)).float(), dim=-1)
        if config.weight_layerwise > 0:  # [L, count·B, P] -> count × [L, B, P]
            layers = (self.teacher["layer_projector"] if teacher else self.layer_projector).embed(encoded.fused)
            for result, chunk in zip(results, layers.chunk(count, dim=1)):
                result.layers = chunk
        if distill:
            predictions = self.distillation(encoded.layer_cls, self.distill_projector, self.distill_predictor)
            for result, chunk in zip(results, predictions.chunk(count, dim=1)):
                result.distill = chunk
        if config.weight_gram > 0:
            for result, part in zip(results, parts):
                result.gram = part.output.gram
        return results

    # -------------------------------------------------------------------------------------------- forward
    def forward(self, pixel_values: torch.Tensor, pixel_values_2: torch.Tensor, momentum: float | None = None,
                return_dict: bool | None = None, **kwargs) -> ArtStylePretrainingOutput:
        if pixel_values_2 is None:
            raise ValueError("ArtStyleForPretraining needs two views: `pixel_values` and `pixel_values_2`")
        if pixel_values.shape != pixel_values_2.shape:
            raise ValueError("`pixel_values` and `pixel_values_2` must have the same shape (both views are encoded in "
                             f"one pass), got {tuple(pixel_values.shape)} and {tuple(pixel_values_2.shape)}")
        config = self.config
        # the negatives: a copy of the queue, taken eagerly (`queue_snapshot`) and FIRST, so that under torch.compile
        # the one graph break it makes leaves the rest of the step in one graph (the enqueue below writes the buffer)
        queue = queue_snapshot(self.queue) if self.queue is not None and config.weight_contrastive > 0 else None
        if momentum is not None and self.training:
            self.update_teacher(momentum)
        views = (pixel_values, pixel_values_2)
        students = self._views(views, teacher=False)
        with torch.no_grad():
            teachers = self._views(views, teacher=True)
        # the teacher keys of each view, gathered over processes (in-batch negatives, distillation targets)
        gathered = [_GatheredKeys(*gather_from_all(t.key)) if t.key is not None else _GatheredKeys() for t in teachers]
        pairs = [(students[0], teachers[1], gathered[1]), (students[1], teachers[0], gathered[0])]  # cross-view

        def symmetric(term) -> torch.Tensor:
            return sum(term(student, teacher, keys) for student, teacher, keys in pairs) / 2

        def both(get, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
            """Both cross-view halves of a term in ONE call (half the launches of two): the students' values of
            views 1, 2 and the teachers' of views 2, 1, concatenated along ``dim``. Every term averages over the
            rows of that dimension and the halves have the same size, so the call's value is the mean of the two."""
            return (torch.cat([get(s) for s, _, _ in pairs], dim=dim),
                    torch.cat([get(t) for _, t, _ in pairs], dim=dim))

        zero = pixel_values.new_zeros((), dtype=torch.float32)
        contrastive = layerwise = distill = gram = zero
        if config.weight_contrastive > 0:
            if queue is not None and queue.shape[0] > 0:  # the queue: the same negatives for both halves
                contrastive = self.soft_contrastive(*both(lambda v: v.key), negatives=queue)
            else:  # in-batch negatives: each half has its own
                contrastive = symmetric(lambda s, t, k: self.soft_contrastive(s.key, t.key, negatives=queue,
                                                                              keys=k.keys, offset=k.offset))
        if config.weight_layerwise > 0:  # [2L, B, P]: one InfoNCE per (half, layer), averaged
            layerwise = self.layer_projector.loss(*both(lambda v: v.layers))
        if config.weight_distill > 0:  # [2, L, B, P] predictions against each half's teacher keys [2, 1, M, P]
            targets = torch.stack([k.keys for _, _, k in pairs]).unsqueeze(1)  # broadcast over the layers, no copy
            distill = self.distillation.loss(torch.stack([s.distill for s, _, _ in pairs]), targets, pairs[0][2].offset)
        if config.weight_gram > 0 and config.gram_loss == "infonce":
            gram_keys = [gather_from_all(t.gram) for t in teachers]  # other images' Gram matrices: negatives
            gram = self.gram_nce(torch.stack([students[0].gram, students[1].gram]),
                                 torch.stack([gram_keys[1][0], gram_keys[0][0]]), gram_keys[0][1])
        elif config.weight_gram > 0:
            gram = self.gram_mse(*both(lambda v: v.gram))

        # enqueue only now: the keys of this batch must not be negatives of either symmetric term
        if self.queue is not None and self.training and config.weight_contrastive > 0:
            enqueue_keys(self.queue, self.queue_ptr, gathered[1].keys)

        loss = (config.weight_contrastive * contrastive + config.weight_layerwise * layerwise
                + config.weight_distill * distill + config.weight_gram * gram)
        first = students[0].output
        output = ArtStylePretrainingOutput(
            loss=loss, loss_contrastive=contrastive, loss_layerwise=layerwise, loss_distill=distill, loss_gram=gram,
            pooler_output=first.pooler_output, fusion_weights=first.fusion_weights,
            fusion_pool_weights=first.fusion_pool_weights)
        return output if return_dict is not False else output.to_tuple()


# ---------------------------------------------------------------------------------------------- classification
class ArtStyleForImageClassification(ArtStylePreTrainedModel):
    """[`ArtStyleModel`] with a linear head on ``pooler_output``; loss by ``config.problem_type`` (single-label
    cross-entropy, multi-label BCE with float multi-hot labels, or regression MSE).

    Fusion/Gram parameters that the chosen pooler does not use are frozen (they would get no gradient, which
    breaks DDP) but kept, so a checkpoint round-trips unchanged.
    """

    def __init__(self, config: ArtStyleConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.artstyle = ArtStyleModel(config)
        hidden = self.artstyle.pooler_dim
        self.classifier = nn.Linear(hidden, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.artstyle.freeze_unused(used_by_losses=False)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                **kwargs) -> ImageClassifierOutput:
        encoded = self.artstyle.encode(pixel_values, output_hidden_states=bool(output_hidden_states),
                                       pooler_only=True)
        logits = self.classifier(encoded.output.pooler_output)
        loss = self.compute_loss(logits, labels) if labels is not None else None
        output = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=encoded.output.hidden_states)
        return output if return_dict is not False else output.to_tuple()

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(logits.device)
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int) and labels.dim() == 1:
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        logits = logits.float()
        if self.config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.float().view(-1))
        if self.config.problem_type == "single_label_classification":
            if labels.dim() != 1:
                raise ValueError(f"single-label `labels` must have shape [batch], got {tuple(labels.shape)}")
            return F.cross_entropy(logits, labels.long())
        if labels.shape != logits.shape:
            raise ValueError(f"multi-label `labels` must be multi-hot of shape {tuple(logits.shape)}, "
                             f"got {tuple(labels.shape)}")
        return F.binary_cross_entropy_with_logits(logits, labels.float())


__all__ = [
    "ArtStyleModel",
    "ArtStyleForPretraining",
    "ArtStyleForImageClassification",
    "ArtStylePreTrainedModel",
    "ArtStyleModelOutput",
    "ArtStylePretrainingOutput",
    "build_backbone",
]
