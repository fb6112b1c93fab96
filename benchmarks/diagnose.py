"""Diagnostics of a pretrained artstyle folder (or a freshly initialised model) on a labelled dataset, CPU-cheap.

Writes into ``--output_dir``: ``diagnostics.json`` and one PNG per diagnostic:

  grad_norms.png        gradient norm each weighted loss term sends into every backbone block (two-view batches
                        of the pretraining augmentation; ``artstyle.diagnostics.loss_gradient_norms``)
  block_probe.png       logistic-regression accuracy on the CLS token of every block, and on the pooler output
  collapse.png          effective rank and uniformity of the pooler features and of the Gram vectors
  gram_stats.png        histogram of the pairwise cosines of the Gram vectors (Gram module only)
  fusion_attention.png  mean cross-layer attention and attention pooling of the fusion (fusion only)

The probes train on ``--max_train_images`` images of the train part and are scored on ``--max_eval_images`` of
the held-out part: ``--eval_split validation`` (default; carved, stratified, from the train part of a
``--test_size`` split, or the dataset's own validation split) or ``test``. Tune on validation only.

    python benchmarks/diagnose.py --model_name_or_path outputs/pretrain --dataset imagefolder \\
        --data_dir ../shared/data/realart-dev --output_dir /tmp/diagnose
    python benchmarks/diagnose.py --model_name_or_path none --config_preset tiny --output_dir /tmp/diag_random
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from artstyle import diagnostics
from artstyle.configuration_artstyle import CONFIG_PRESETS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model_name_or_path", required=True,
                        help="Pretraining folder (ArtStyleForPretraining), or 'none' for a fresh model.")
    parser.add_argument("--config_preset", default="tiny", choices=CONFIG_PRESETS,
                        help="Preset of the fresh model (--model_name_or_path none).")
    parser.add_argument("--config_overrides", default=None, help="JSON config fields of the fresh model.")
    parser.add_argument("--dataset", default="demo", help="load_style_dataset name: demo, imagefolder, ...")
    parser.add_argument("--data_dir", default=None, help="Class-per-folder dataset (with --dataset imagefolder).")
    parser.add_argument("--test_size", type=float, default=0.2, help="Held-out fraction (imagefolder, stratified).")
    parser.add_argument("--split_seed", type=int, default=0)
    parser.add_argument("--eval_split", default="validation", choices=["validation", "test"])
    parser.add_argument("--max_train_images", type=int, default=600, help="Probe training images (evenly spaced).")
    parser.add_argument("--max_eval_images", type=int, default=300, help="Held-out images (evenly spaced).")
    parser.add_argument("--grad_batches", type=int, default=2, help="Two-view batches for the gradient norms.")
    parser.add_argument("--grad_batch_size", type=int, default=32)
    parser.add_argument("--augmentation", default="style_preserving", choices=["moco_v3", "style_preserving"])
    parser.add_argument("--batch_size", type=int, default=64, help="Feature extraction batch.")
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    if args.model_name_or_path != "none" and not Path(args.model_name_or_path).is_dir():
        parser.error(f"--model_name_or_path {args.model_name_or_path!r} is not a folder (or 'none')")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        parser.error(f"--data_dir {args.data_dir!r} is not a folder")
    for name in ("max_train_images", "max_eval_images", "grad_batch_size", "batch_size"):
        if getattr(args, name) < 2:
            parser.error(f"--{name} must be >= 2, got {getattr(args, name)}")
    if args.grad_batches < 0:
        parser.error(f"--grad_batches must be >= 0, got {args.grad_batches}")
    try:
        args.config_overrides = json.loads(args.config_overrides) if args.config_overrides else {}
    except json.JSONDecodeError as error:
        parser.error(f"--config_overrides is not valid JSON: {error}")
    return args


# ---------------------------------------------------------------------------------------------- model and data
def load_model(args: argparse.Namespace):
    from artstyle import ArtStyleConfig, ArtStyleForPretraining

    if args.model_name_or_path == "none":
        torch.manual_seed(args.seed)
        return ArtStyleForPretraining(ArtStyleConfig.from_preset(args.config_preset, **args.config_overrides))
    return ArtStyleForPretraining.from_pretrained(args.model_name_or_path)


def evenly_spaced(split, limit: int):
    """``limit`` evenly spaced rows (class-ordered splits keep every class)."""
    if limit >= len(split):
        return split
    return split.select(sorted({round(i * (len(split) - 1) / (limit - 1)) for i in range(limit)}))


def load_splits(args: argparse.Namespace) -> dict:
    """``{"train": ..., "eval": ...}``: the probe's training part and the held-out part (``--eval_split``)."""
    from artstyle.data import load_style_dataset
    from artstyle.data.common import stratified_split

    options = {"test_size": args.test_size, "seed": args.split_seed} if args.dataset == "imagefolder" else {}
    splits = load_style_dataset(args.dataset, data_dir=args.data_dir, **options)
    train = splits["train"]
    if args.eval_split == "test":
        held_out = splits["test"]
    elif "validation" in splits:
        held_out = splits["validation"]
    else:  # carve a stratified validation part out of train; the test split is never read
        parts = stratified_split(train["label"], {"train": 1.0 - args.test_size, "validation": args.test_size},
                                 seed=args.split_seed)
        train, held_out = train.select(parts["train"]), train.select(parts["validation"])
    return {"train": train, "eval": held_out}


def feature_loader(split, config, args: argparse.Namespace) -> DataLoader:
    from artstyle import build_image_processor
    from artstyle.data import StyleImageDataset, collate_skip_bad
    from artstyle.transforms import build_eval_transform

    transform = build_eval_transform(build_image_processor(config))
    return DataLoader(StyleImageDataset(split, transform), batch_size=args.batch_size, shuffle=False,
                      num_workers=args.num_workers, collate_fn=collate_skip_bad)


def two_view_batches(split, config, args: argparse.Namespace) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from artstyle.data import StyleImageDataset, collate_skip_bad
    from artstyle.transforms import build_ssl_transform

    transform = build_ssl_transform(args.augmentation, image_size=config.image_size, mean=config.image_mean,
                                    std=config.image_std)
    generator = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(StyleImageDataset(split, transform, label_column=None), batch_size=args.grad_batch_size,
                        shuffle=True, generator=generator, drop_last=True, num_workers=args.num_workers,
                        collate_fn=collate_skip_bad)
    batches = []
    torch.manual_seed(args.seed)
    for batch in loader:
        if len(batches) == args.grad_batches:
            break
        if batch is not None:
            batches.append((batch["pixel_values"], batch["pixel_values_2"]))
    return batches


# ---------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> dict:
    model = load_model(args)
    config = model.config
    device = torch.device(args.device)
    model.to(device)
    splits = load_splits(args)
    train, held_out = evenly_spaced(splits["train"], args.max_train_images), evenly_spaced(splits["eval"],
                                                                                           args.max_eval_images)
    result = {"model": args.model_name_or_path, "config": {k: getattr(config, k) for k in (
        "weight_contrastive", "weight_layerwise", "weight_distill", "weight_gram", "soft_alpha", "pooler",
        "image_size", "gram_layer", "fusion_layers", "distill_layers")},
        "dataset": args.dataset, "eval_split": args.eval_split, "num_train": len(train), "num_eval": len(held_out)}

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    grads = [diagnostics.loss_gradient_norms(model, v1.to(device), v2.to(device))
             for v1, v2 in two_view_batches(splits["train"], config, args)]
    result["gradient_norms"] = diagnostics.mean_gradient_norms(grads) if grads else None

    encoder = model.artstyle
    train_out = diagnostics.encoder_outputs(encoder, feature_loader(train, config, args), device)
    eval_out = diagnostics.encoder_outputs(encoder, feature_loader(held_out, config, args), device)
    depth = len(train_out["block_cls"])
    train_sets = list(train_out["block_cls"]) + list(train_out["block_token_energy"]) + [train_out["pooler"]]
    eval_sets = list(eval_out["block_cls"]) + list(eval_out["block_token_energy"]) + [eval_out["pooler"]]
    accuracies = diagnostics.block_linear_probe(train_sets, train_out["labels"], eval_sets, eval_out["labels"])
    result["block_probe"] = {"blocks": list(range(depth)), "block_cls_acc": accuracies[:depth],
                             "block_token_energy_acc": accuracies[depth:2 * depth], "pooler_acc": accuracies[-1],
                             "chance": 1.0 / int(train_out["labels"].max() + 1)}
    result["collapse"] = {"pooler": diagnostics.representation_stats(eval_out["pooler"]),
                          "last_block_cls": diagnostics.representation_stats(eval_out["block_cls"][-1])}
    if eval_out["gram"] is not None:
        result["collapse"]["gram"] = diagnostics.representation_stats(eval_out["gram"])
        result["gram_pairwise_cosines"] = diagnostics.pairwise_cosines(eval_out["gram"], max_pairs=5000)
    result["fusion_attention"] = diagnostics.fusion_attention_summary(eval_out, config.resolved_fusion_layers())
    result["runtime_s"] = round(time.perf_counter() - start, 1)
    return result


# ---------------------------------------------------------------------------------------------- plots
def write_plots(result: dict, output_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(figure, name):
        figure.tight_layout()
        figure.savefig(output_dir / name, dpi=110)
        plt.close(figure)
        written.append(output_dir / name)

    title = Path(result["model"]).name
    grads = result.get("gradient_norms")
    if grads:
        figure, axis = plt.subplots(figsize=(6, 3.8))
        for term in diagnostics.LOSS_TERMS:
            if grads["total"][term] > 0:
                cosine = grads["cosine_with_contrastive"][term]
                label = term if cosine is None or term == "contrastive" else f"{term} (cos {cosine:+.2f})"
                axis.plot(grads["blocks"], grads["norms"][term], marker="o", label=label)
        axis.set_yscale("log")
        axis.set_xlabel("backbone block")
        axis.set_ylabel("‖∂(w·L)/∂θ_block‖")
        axis.set_title(f"gradient norm per loss term — {title}")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
        save(figure, "grad_norms.png")

    probe = result["block_probe"]
    figure, axis = plt.subplots(figsize=(6, 3.8))
    axis.plot(probe["blocks"], [a * 100 for a in probe["block_cls_acc"]], marker="o", label="CLS of block")
    axis.plot(probe["blocks"], [a * 100 for a in probe["block_token_energy_acc"]], marker="s", color="C2",
              label="patch-token energy of block (mean t², texture)")
    axis.axhline(probe["pooler_acc"] * 100, color="C1", linestyle="-.", label="pooler output")
    axis.axhline(probe["chance"] * 100, color="grey", linestyle="--", label="chance")
    axis.set_xlabel("backbone block")
    axis.set_ylabel(f"{result['eval_split']} accuracy (%)")
    axis.set_title(f"per-block linear probe — {title}")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    save(figure, "block_probe.png")

    collapse = result["collapse"]
    names = list(collapse)
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for axis, key, label in ((axes[0], "effective_rank", "effective rank"), (axes[1], "uniformity",
                                                                              "uniformity (lower = spread)")):
        bars = axis.bar(names, [collapse[n][key] for n in names], color=["C0", "C2", "C3"][:len(names)])
        axis.bar_label(bars, fmt="%.2f", fontsize=8)
        axis.set_title(label)
    figure.suptitle(f"collapse — {title}")
    save(figure, "collapse.png")

    if "gram_pairwise_cosines" in result:
        figure, axis = plt.subplots(figsize=(6, 3.5))
        axis.hist(result["gram_pairwise_cosines"], bins=50, color="C3")
        gram = collapse["gram"]
        axis.set_title(f"Gram vectors: mean pairwise cosine {gram['mean_pairwise_cosine']:.2f}, "
                       f"effective rank {gram['effective_rank']:.1f}", fontsize=9)
        axis.set_xlabel("cosine between two images' Gram vectors")
        save(figure, "gram_stats.png")

    fusion = result.get("fusion_attention")
    if fusion:
        figure, axes = plt.subplots(1, 2 if fusion["pool"] else 1, figsize=(8, 3.6), squeeze=False)
        image = axes[0][0].imshow(fusion["cross_layer"], cmap="viridis")
        ticks = range(len(fusion["layers"]))
        axes[0][0].set_xticks(ticks, fusion["layers"])
        axes[0][0].set_yticks(ticks, fusion["layers"])
        axes[0][0].set_xlabel("attended block")
        axes[0][0].set_ylabel("attending block")
        figure.colorbar(image, ax=axes[0][0])
        if fusion["pool"]:
            axes[0][1].bar([str(i) for i in fusion["layers"]], fusion["pool"])
            axes[0][1].set_title("attention pooling weight", fontsize=9)
        figure.suptitle(f"fusion attention (mean over images) — {title}")
        save(figure, "fusion_attention.png")
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    result = run(args)
    (output_dir / "diagnostics.json").write_text(json.dumps(result, indent=2))
    plots = write_plots(result, output_dir)
    probe, collapse = result["block_probe"], result["collapse"]
    print(f"block probe ({args.eval_split}): " + " ".join(f"{a:.3f}" for a in probe["block_cls_acc"])
          + f" | pooler {probe['pooler_acc']:.3f}")
    print(f"token-energy probe ({args.eval_split}): "
          + " ".join(f"{a:.3f}" for a in probe["block_token_energy_acc"]))
    for name, stats in collapse.items():
        print(f"{name}: effective rank {stats['effective_rank']:.2f}, uniformity {stats['uniformity']:.3f}, "
              f"mean pairwise cosine {stats['mean_pairwise_cosine']:.3f}")
    if result["gradient_norms"]:
        print("grad norm per term (whole backbone): " + ", ".join(
            f"{t} {v:.3g}" for t, v in result["gradient_norms"]["total"].items()))
    print(f"wrote {output_dir / 'diagnostics.json'} and {len(plots)} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
