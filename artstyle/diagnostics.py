"""Diagnostics that explain what each component of the method does to the representation (CPU-cheap).

- `loss_gradient_norms`: the gradient norm that each *weighted* loss term sends into every block of the shared
  backbone (``torch.autograd.grad`` of ``weight · L_term`` w.r.t. the block's parameters), and the cosine between
  each term's backbone gradient and the contrastive term's: which loss drives which block, and do they agree.
- `encoder_outputs` + `block_linear_probe`: a logistic regression (scikit-learn) on the CLS token of every block:
  which layer holds the style.
- `effective_rank` (Roy & Vetterli 2007; RankMe, Garrido et al. 2023), `uniformity` (Wang & Isola 2020) and
  `mean_pairwise_cosine`: does a representation collapse (CLS/pooler features, the learnable Gram vectors).
- `fusion_attention_summary`: the fusion's cross-layer attention and attention pooling, averaged over images.

`benchmarks/diagnose.py` runs them on a pretrained folder (or a fresh model) and writes one PNG per diagnostic.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LOSS_TERMS = ("contrastive", "layerwise", "distill", "gram")


# ---------------------------------------------------------------------------------------------- collapse
def effective_rank(features: torch.Tensor) -> float:
    """``exp(H(p))`` with ``p = σ / Σσ`` the normalised singular values of ``features`` ``[N, D]`` (RankMe: no
    centring). 1 for a rank-1 matrix, ``min(N, D)`` when every singular value is equal; 0 for an all-zero matrix."""
    if features.ndim != 2:
        raise ValueError(f"`features` must be [N, D], got shape {tuple(features.shape)}")
    singular = torch.linalg.svdvals(features.detach().double())
    total = singular.sum()
    if total <= 0:
        return 0.0
    p = singular / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def uniformity(features: torch.Tensor, t: float = 2.0) -> float:
    """Wang & Isola's uniformity ``log mean_{i<j} exp(-t ||x_i - x_j||²)`` of the L2-normalised rows (lower = more
    uniform on the sphere; 0 when every row is the same direction)."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"`features` must be [N >= 2, D], got shape {tuple(features.shape)}")
    x = F.normalize(features.detach().double(), dim=1)
    return float(torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log())


def mean_pairwise_cosine(features: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs ``i != j`` of rows (1 = every image the same direction)."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"`features` must be [N >= 2, D], got shape {tuple(features.shape)}")
    x = F.normalize(features.detach().double(), dim=1)
    n = x.shape[0]
    similarity = x @ x.T
    return float((similarity.sum() - similarity.diagonal().sum()) / (n * (n - 1)))


def representation_stats(features: torch.Tensor) -> dict:
    """Effective rank, uniformity and mean pairwise cosine of ``features`` ``[N, D]`` (flattened if more dims)."""
    features = features.reshape(features.shape[0], -1)
    return {"effective_rank": effective_rank(features), "uniformity": uniformity(features),
            "mean_pairwise_cosine": mean_pairwise_cosine(features), "dim": int(features.shape[1]),
            "num_images": int(features.shape[0])}


# ---------------------------------------------------------------------------------------------- gradients
def loss_gradient_norms(model: nn.Module, pixel_values: torch.Tensor, pixel_values_2: torch.Tensor) -> dict:
    """Per loss term, the L2 norm of ``∂(weight · L_term)/∂θ_block`` for every backbone block ``θ_block``.

    ``model`` is an `ArtStyleForPretraining`; it runs in training mode (drop path, batch-stat BatchNorm, as in
    pretraining), without a teacher update, and its queue is restored afterwards. A term whose weight is 0 gets
    zeros. Returns ``{"blocks": [0..L-1], "norms": {term: [per block]}, "total": {term: norm over all blocks},
    "cosine_with_contrastive": {term: cosine of the whole-backbone gradients}, "losses": {term: value}}``.
    """
    blocks = list(model.artstyle.backbone.blocks)
    params = [[p for p in block.parameters() if p.requires_grad] for block in blocks]
    flat = [p for group in params for p in group]
    saved = {name: buffer.clone() for name, buffer in model.named_buffers() if name.startswith("queue")}
    was_training = model.training
    model.train()
    try:
        output = model(pixel_values, pixel_values_2, momentum=None)
        norms, totals, vectors, losses = {}, {}, {}, {}
        for term in LOSS_TERMS:
            weight = float(getattr(model.config, f"weight_{term}"))
            value = getattr(output, f"loss_{term}")
            losses[term] = float(value.detach())
            if weight == 0 or not value.requires_grad:
                norms[term] = [0.0] * len(blocks)
                totals[term] = 0.0
                vectors[term] = None
                continue
            grads = torch.autograd.grad(weight * value, flat, retain_graph=True, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(flat, grads)]
            vector = torch.cat([g.reshape(-1).double() for g in grads])
            per_block, start = [], 0
            for group in params:
                count = sum(p.numel() for p in group)
                per_block.append(float(vector[start:start + count].norm()))
                start += count
            norms[term], totals[term], vectors[term] = per_block, float(vector.norm()), vector
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in saved:
                    buffer.copy_(saved[name])
        model.train(was_training)
    reference = vectors["contrastive"]
    cosines = {}
    for term in LOSS_TERMS:
        if reference is None or vectors[term] is None or reference.norm() == 0 or vectors[term].norm() == 0:
            cosines[term] = None
        else:
            cosines[term] = float(F.cosine_similarity(vectors[term], reference, dim=0))
    return {"blocks": list(range(len(blocks))), "norms": norms, "total": totals,
            "cosine_with_contrastive": cosines, "losses": losses}


def mean_gradient_norms(results: list[dict]) -> dict:
    """Average several `loss_gradient_norms` results (one per batch), term by term and block by block."""
    if not results:
        raise ValueError("`results` is empty")
    out = {"blocks": results[0]["blocks"], "norms": {}, "total": {}, "cosine_with_contrastive": {}, "losses": {},
           "num_batches": len(results)}
    for term in LOSS_TERMS:
        out["norms"][term] = np.mean([r["norms"][term] for r in results], axis=0).tolist()
        out["total"][term] = float(np.mean([r["total"][term] for r in results]))
        out["losses"][term] = float(np.mean([r["losses"][term] for r in results]))
        cosines = [r["cosine_with_contrastive"][term] for r in results]
        out["cosine_with_contrastive"][term] = None if None in cosines else float(np.mean(cosines))
    return out


# ---------------------------------------------------------------------------------------------- encoder outputs
@torch.no_grad()
def encoder_outputs(encoder: nn.Module, dataloader, device: torch.device | str = "cpu") -> dict:
    """One pass of an `ArtStyleModel` (eval mode) over ``dataloader``: every block's CLS token and patch-token
    energy, the pooler output, the Gram vectors (flattened; when the Gram module exists), the fusion weights and the
    labels.

    The patch-token energy of a block is the mean over its patch tokens of each squared feature,
    ``1/N_p · Σ_p t_p²`` (``[D]`` per image): the diagonal of the tokens' second moment, the texture statistic of
    Gatys-style Gram matrices. A texture whose tokens vary in sign from patch to patch (strokes, dots) averages out of
    a mean-pooled or CLS feature but not out of its energy.

    Returns ``{"block_cls": [L, N, D], "block_token_energy": [L, N, D], "pooler": [N, D], "gram": [N, C*C] | None,
    "fusion_weights": [N, L', L'] | None, "fusion_pool_weights": [N, L'] | None, "labels": [N] | None}`` (float32
    CPU tensors).
    """
    encoder = encoder.to(device).eval()
    prefix = encoder.backbone.num_prefix_tokens
    parts: dict[str, list] = {"block_cls": [], "block_token_energy": [], "pooler": [], "gram": [],
                              "fusion_weights": [], "fusion_pool_weights": [], "labels": []}
    for batch in dataloader:
        if batch is None:
            continue
        out = encoder.encode(batch["pixel_values"].to(device), output_hidden_states=True).output
        parts["block_cls"].append(torch.stack([h[:, 0] for h in out.hidden_states]).float().cpu())
        parts["block_token_energy"].append(
            torch.stack([h[:, prefix:].float().pow(2).mean(1) for h in out.hidden_states]).cpu())
        parts["pooler"].append(out.pooler_output.float().cpu())
        for name in ("gram", "fusion_weights", "fusion_pool_weights"):
            value = getattr(out, name)
            if value is not None:
                parts[name].append(value.float().cpu())
        if "labels" in batch:
            parts["labels"].append(batch["labels"].cpu())
    if not parts["pooler"]:
        raise ValueError("the dataloader yielded no decodable image")
    result = {"block_cls": torch.cat(parts["block_cls"], dim=1),
              "block_token_energy": torch.cat(parts["block_token_energy"], dim=1), "pooler": torch.cat(parts["pooler"])}
    for name in ("gram", "fusion_weights", "fusion_pool_weights", "labels"):
        result[name] = torch.cat(parts[name]) if parts[name] else None
    if result["gram"] is not None:
        result["gram"] = result["gram"].reshape(result["gram"].shape[0], -1)
    return result


def block_linear_probe(train_features: list[torch.Tensor], train_labels: torch.Tensor,
                       test_features: list[torch.Tensor], test_labels: torch.Tensor, max_iter: int = 1000,
                       C: float = 1.0) -> list[float]:
    """Test accuracy of a standardised multinomial logistic regression (scikit-learn) per feature set, e.g. the
    CLS token of every block. ``train_features[i]`` and ``test_features[i]`` are ``[N, D_i]``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(train_features) != len(test_features):
        raise ValueError(f"{len(train_features)} train feature sets but {len(test_features)} test feature sets")
    y_train, y_test = np.asarray(train_labels), np.asarray(test_labels)
    accuracies = []
    for x_train, x_test in zip(train_features, test_features):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=C))
        probe.fit(np.asarray(x_train, dtype=np.float64), y_train)
        accuracies.append(float(probe.score(np.asarray(x_test, dtype=np.float64), y_test)))
    return accuracies


def fusion_attention_summary(outputs: dict, fusion_layers: list[int]) -> dict | None:
    """Mean over images of the fusion's cross-layer attention ``[L', L']`` (row = attending layer) and of the
    attention pooling ``[L']``; ``None`` when the model has no fusion. The entropy of the mean pooling weights is
    ``log L'`` for a uniform pooling and 0 when one layer takes everything."""
    weights = outputs.get("fusion_weights")
    if weights is None:
        return None
    summary = {"layers": list(fusion_layers), "cross_layer": weights.mean(dim=0).tolist(), "pool": None,
               "pool_entropy": None, "uniform_entropy": math.log(len(fusion_layers))}
    pool = outputs.get("fusion_pool_weights")
    if pool is not None:
        mean = pool.mean(dim=0)
        summary["pool"] = mean.tolist()
        summary["pool_entropy"] = float(-(mean.clamp_min(1e-12) * mean.clamp_min(1e-12).log()).sum())
    return summary


def pairwise_cosines(features: torch.Tensor, max_pairs: int = 20000, seed: int = 0) -> list[float]:
    """Cosines of (a random subset of) the pairs ``i < j``, for histograms."""
    x = F.normalize(features.detach().double(), dim=1)
    rows, cols = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    if rows.numel() > max_pairs:
        pick = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(seed))[:max_pairs]
        rows, cols = rows[pick], cols[pick]
    return (x[rows] * x[cols]).sum(dim=1).tolist()
