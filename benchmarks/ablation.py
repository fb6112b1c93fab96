"""Ablation of the artstyle method: what each component buys on held-out paintings.

For every (setting, seed): pretrain with ``run_pretrain.py`` (subprocess, its own CLI) on the TRAIN part of a
class-per-folder dataset, then evaluate the student encoder on the TEST part three ways: a linear probe and a
weighted kNN on frozen ``pooler_output`` features (``artstyle.evaluation``: ``extract_features``,
``train_linear_probe``, ``knn_classify``), and a FINE-TUNE (the paper's protocol) with one fixed short recipe for
every setting: ``ArtStyleForImageClassification`` initialised from the encoder, AdamW with layer-wise LR decay
(``artstyle.evaluation.layer_decay_param_groups``), cosine schedule with one warm-up epoch, label smoothing 0.1,
RandomResizedCrop + flip (``--finetune_*`` options; ``--finetune_epochs 0`` skips it).
The split is ``load_style_dataset("imagefolder", data_dir=..., test_size=0.2, seed=0)``: deterministic,
stratified per class, fixed before any result is seen and never tuned on. Labels are used only by the evaluation.

Settings (``--settings``; a profile picks a default list):

  random_init        no pretraining: the encoder as initialised (seeded), the preset's pooler (cls_gram_diag)
  moco_v3            MoCo v3 baseline: ``config.moco_v3_baseline()`` (hard contrast only, CLS pooler)
  moco_v3+layerwise  baseline + attention-guided layer-wise contrast (weight_layerwise)
  moco_v3+distill    baseline + multi-layer self-distillation (weight_distill)
  moco_v3+soft       baseline + similarity-aware soft contrast (soft_alpha < 1)
  moco_v3+gram       baseline + learnable Gram loss (weight_gram)
  full               all four components (the preset's defaults), pooler cls_gram_diag (the default)
  full_fused         all four, pooler "fused";  full_fused_style: all four, pooler "fused_style"
  full+gram_mse      all four, the paper's Gram term: MSE between the two views' Gram matrices (``gram_loss="mse"``)
  full+gram_infonce  all four, the Gram term as InfoNCE against the other images (``gram_loss="infonce"``)
  full+late_layers   all four, layer-wise contrast and distillation on the later half of the blocks only

Component values (weights, soft_alpha) are the preset's defaults, read from ``ArtStyleConfig``.

Read-outs (``--readouts cls,gram_diag,cls_gram_diag``): each (setting, seed) is also evaluated with its encoder's
pooler switched to another read-out pooler (``"cls"``; ``"gram_diag"``: the log Gram diagonal of the patch tokens,
whose LayerNorm starts as the identity affine; ``"cls_gram_diag"``, the default: the CLS next to it), recorded as
setting ``<setting>@<pooler>``. Pretraining does not depend on which of the three a config names (the projector reads
the CLS), so one pretraining serves every record and the report adds full − moco_v3 with the pooler held fixed.
Resumable like the settings: a later call adds the read-outs a saved (setting, seed) lacks, from its pretrained folder
(or its seeded random init), without pretraining again.

Budget per run: ``--max_steps N`` (same number of steps for every setting) or ``--minutes M`` (same wall-clock
pretraining time: a 5-step calibration run of ``run_pretrain.py`` per setting measures seconds per step, cached in
``<output_dir>/calibration``). The calibration reflects the machine load at that moment: where the load changes
during an ablation (a shared machine), settings calibrated at different times get unequal step counts for reasons
that have nothing to do with their cost, so prefer ``--max_steps`` there. Every (setting, seed) writes
``<output_dir>/results/<setting>__seed<seed>.json`` and is skipped when that file exists, so an ablation can run in
pieces, in the background, and resume after a crash.
At the end (and with ``--report_only``) ``<output_dir>/ablation.md`` (mean ± std over seeds, and per seed the PAIRED
difference full − moco_v3 with its mean and standard error) and ``ablation.png`` (bar chart + paired differences)
are written from every result file present; ``ablation_records.json`` lists one flat record per (setting, seed):
setting, seed, steps, batch, image_size, linear_probe_acc, knn_acc, finetune_acc (fractions).

Profiles: ``quick`` (CPU: random_init, moco_v3, full; seed 0; ``--max_steps 200`` by default: ≈ 15–17 minutes a
run on an idle 2-core machine, where a batch-64 step takes 4–5 s; a fixed step count keeps settings comparable)
and ``complete`` (every setting, seeds 0 1 2; ``--max_steps 2000`` by default; meant for a GPU).

    python benchmarks/ablation.py --data_dir /path/to/realart-dev --output_dir /tmp/ablation --profile quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from artstyle.configuration_artstyle import COMPONENTS, CONFIG_PRESETS

REPO = Path(__file__).resolve().parents[1]
RESULT_VERSION = 2
RECORD_FIELDS = ("setting", "seed", "steps", "batch", "image_size", "linear_probe_acc", "knn_acc",
                 "finetune_acc")
METRICS = (("linear_probe_acc", "linear probe"), ("knn_acc", "kNN"), ("finetune_acc", "fine-tune"))

# variants of the full method that the method work of issue 10 compares (see docs/method.md)
FULL_VARIANTS = ("gram_mse", "gram_infonce", "late_layers")
ALL_SETTINGS = (["random_init", "moco_v3"] + [f"moco_v3+{name}" for name in COMPONENTS]
                + ["full", "full_fused", "full_fused_style"] + [f"full+{name}" for name in FULL_VARIANTS])
# Read-out poolers: interchangeable on one pretrained encoder, since under each of them the contrastive projector
# reads the CLS (pretraining does not depend on which one a config names).
READOUTS = ("cls", "gram_diag", "cls_gram_diag")
PROFILES = {
    "quick": {"settings": ["random_init", "moco_v3", "full"], "seeds": [0], "minutes": None, "max_steps": 200,
              "batch_size": 64},
    "complete": {"settings": ALL_SETTINGS, "seeds": [0, 1, 2], "minutes": None, "max_steps": 2000,
                 "batch_size": 128},
}


# ---------------------------------------------------------------------------------------------- arguments
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data_dir", required=True, help="Class-per-folder dataset (one sub-folder per class).")
    parser.add_argument("--output_dir", required=True,
                        help="Where runs, result JSONs, the table and the chart go (keep it outside the repo).")
    parser.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    parser.add_argument("--settings", default=None, help=f"Comma list overriding the profile; from {ALL_SETTINGS}.")
    parser.add_argument("--seeds", default=None, help="Comma list of seeds overriding the profile (e.g. 0,1,2).")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, help="Pretraining wall-clock budget per run.")
    budget.add_argument("--max_steps", type=int, default=None, help="Pretraining steps per run.")
    parser.add_argument("--config_preset", default="tiny", choices=CONFIG_PRESETS)
    parser.add_argument("--config_overrides", default=None,
                        help="JSON object of config fields applied to EVERY setting (e.g. image size, queue size).")
    parser.add_argument("--batch_size", type=int, default=None, help="Pretraining batch per process (profile's).")
    parser.add_argument("--learning_rate", type=float, default=None, help="run_pretrain.py's default if omitted.")
    parser.add_argument("--augmentation", default="style_preserving", choices=["moco_v3", "style_preserving"],
                        help="run_pretrain.py --augmentation for every setting. style_preserving was chosen on the "
                             "validation part of realart-dev (MoCo v3 baseline, 200 steps: 33.1 vs 31.4 %% linear "
                             "probe, one seed: within noise, and colour is part of a painting's style).")
    parser.add_argument("--mixed_precision", default=None, help="Passed to run_pretrain.py (no|fp16|bf16|auto).")
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader workers (pretraining and features).")
    parser.add_argument("--pretrain_args", default="", help="Extra run_pretrain.py arguments (one shell string).")
    parser.add_argument("--test_size", type=float, default=0.2, help="Held-out fraction (stratified).")
    parser.add_argument("--split_seed", type=int, default=0, help="Seed of the split (fixed; never tune it).")
    parser.add_argument("--eval_split", default="test", choices=["test", "validation"],
                        help="test: report on the held-out test split. validation: for TUNING defaults, hold out a "
                             "stratified --test_size of the TRAIN part (seed --split_seed) and evaluate there; the "
                             "test split is never read.")
    parser.add_argument("--readouts", default="",
                        help=f"Comma list of read-out poolers evaluated on every setting's encoder too, from "
                             f"{READOUTS} (recorded as '<setting>@<pooler>'; no extra pretraining).")
    parser.add_argument("--eval_batch_size", type=int, default=128)
    parser.add_argument("--knn_k", type=int, default=20)
    parser.add_argument("--knn_temperature", type=float, default=0.07)
    parser.add_argument("--probe_epochs", type=int, default=100)
    parser.add_argument("--probe_lr", type=float, default=1e-2)
    parser.add_argument("--finetune_epochs", type=int, default=10,
                        help="Fine-tune evaluation: epochs over the probe's train part (0 = skip the fine-tune).")
    parser.add_argument("--finetune_lr", type=float, default=1e-4, help="Fine-tune: peak AdamW LR (top block).")
    parser.add_argument("--finetune_batch_size", type=int, default=64)
    parser.add_argument("--finetune_layer_decay", type=float, default=0.75)
    parser.add_argument("--finetune_weight_decay", type=float, default=0.05)
    parser.add_argument("--finetune_crop_min", type=float, default=0.25, help="RandomResizedCrop minimum area.")
    parser.add_argument("--finetune_label_smoothing", type=float, default=0.1)
    parser.add_argument("--max_train_images", type=int, default=None,
                        help="Smoke tests: pretrain on the first N train images (run_pretrain --max_train_samples); "
                             "probe on N evenly spaced train images.")
    parser.add_argument("--max_test_images", type=int, default=None,
                        help="Smoke tests: evenly spaced subset of the test split.")
    parser.add_argument("--calibration_steps", type=int, default=5, help="Steps of the --minutes calibration run.")
    parser.add_argument("--device", default=None, help="Device of the evaluation (default: cuda if available).")
    parser.add_argument("--report_only", action="store_true", help="Only rebuild the table and chart.")
    parser.add_argument("--dry_run", action="store_true", help="Print the run_pretrain.py commands and stop.")
    args = parser.parse_args(argv)

    profile = PROFILES[args.profile]
    args.settings = args.settings.split(",") if args.settings else list(profile["settings"])
    unknown = [s for s in args.settings if s not in ALL_SETTINGS]
    if unknown:
        parser.error(f"--settings: unknown {unknown}; choose from {ALL_SETTINGS}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(profile["seeds"])
    except ValueError:
        parser.error(f"--seeds must be a comma list of integers, got {args.seeds!r}")
    args.readouts = [r for r in args.readouts.split(",") if r]
    if [r for r in args.readouts if r not in READOUTS]:
        parser.error(f"--readouts: choose from {READOUTS}, got {args.readouts}")
    if args.minutes is None and args.max_steps is None:
        args.minutes, args.max_steps = profile["minutes"], profile["max_steps"]
    if (args.minutes is not None and args.minutes <= 0) or (args.max_steps is not None and args.max_steps < 1):
        parser.error("--minutes must be > 0 and --max_steps >= 1")
    if args.batch_size is None:
        args.batch_size = profile["batch_size"]
    if not 0 < args.test_size < 1:
        parser.error("--test_size must lie in (0, 1)")
    if args.finetune_epochs < 0 or args.finetune_lr <= 0 or args.finetune_batch_size < 1:
        parser.error("--finetune_epochs must be >= 0, --finetune_lr > 0 and --finetune_batch_size >= 1")
    if not 0 < args.finetune_layer_decay <= 1 or not 0 < args.finetune_crop_min <= 1:
        parser.error("--finetune_layer_decay and --finetune_crop_min must lie in (0, 1]")
    args.config_overrides = json.loads(args.config_overrides) if args.config_overrides else {}
    if not isinstance(args.config_overrides, dict):
        parser.error("--config_overrides must be a JSON object")
    if not args.report_only and not Path(args.data_dir).is_dir():
        parser.error(f"--data_dir {args.data_dir!r} is not a folder")
    return args


# ---------------------------------------------------------------------------------------------- settings
def setting_overrides(setting: str, args: argparse.Namespace) -> dict:
    """Config fields of ``setting`` on top of the preset (+ the shared ``--config_overrides``)."""
    from artstyle import ArtStyleConfig

    defaults = ArtStyleConfig.from_preset(args.config_preset, **args.config_overrides)
    overrides = dict(args.config_overrides)
    if setting in ("random_init", "full"):
        return overrides
    if setting in ("full+gram_mse", "full+gram_infonce"):  # the paper's Gram MSE / the Gram InfoNCE (no collapse)
        return {**overrides, "gram_loss": setting.removeprefix("full+gram_")}
    if setting == "full+late_layers":  # layer-wise contrast and distillation on the later half of the blocks only
        late = list(range(defaults.num_blocks // 2, defaults.num_blocks))
        return {**overrides, "fusion_layers": late, "distill_layers": late}
    if setting.startswith("full_"):
        return {**overrides, "pooler": setting.removeprefix("full_")}
    baseline = defaults.moco_v3_baseline()
    if setting != "moco_v3":
        baseline = baseline.with_components(reference=defaults, **{setting.removeprefix("moco_v3+"): True})
    fields = [field for field, _ in COMPONENTS.values()] + ["pooler"]
    overrides.update({name: getattr(baseline, name) for name in fields})
    return overrides


def build_config(overrides: dict, preset: str):
    from artstyle import ArtStyleConfig

    return ArtStyleConfig.from_preset(preset, **overrides)


def describe(config) -> dict:
    fields = ("weight_contrastive", "weight_layerwise", "weight_distill", "weight_gram", "soft_alpha", "pooler",
              "queue_size", "image_size", "backbone", "patch_size")
    return {name: getattr(config, name) for name in fields}


# ---------------------------------------------------------------------------------------------- pretraining
def pretrain_command(args: argparse.Namespace, overrides: dict, steps: int, seed: int, output_dir: Path) -> list[str]:
    command = [
        sys.executable, str(REPO / "run_pretrain.py"),
        "--dataset_name", "imagefolder", "--data_dir", str(args.data_dir),
        "--dataset_options", json.dumps({"test_size": args.test_size, "seed": args.split_seed}),
        "--train_split", "train",
        "--config_preset", args.config_preset,
        "--per_device_train_batch_size", str(args.batch_size),
        "--max_train_steps", str(steps),
        "--seed", str(seed),
        "--dataloader_num_workers", str(args.num_workers),
        "--output_dir", str(output_dir), "--overwrite_output_dir",
        "--report_to", "none", "--logging_steps", "10",
        "--augmentation", args.augmentation,
    ]
    if overrides:
        command += ["--config_overrides", json.dumps(overrides)]
    if args.max_train_images is not None:
        command += ["--max_train_samples", str(args.max_train_images)]
    if args.learning_rate is not None:
        command += ["--learning_rate", str(args.learning_rate)]
    if args.mixed_precision is not None:
        command += ["--mixed_precision", args.mixed_precision]
    return command + shlex.split(args.pretrain_args)


def run_logged(command: list[str], log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write(shlex.join(command) + "\n")
        log.flush()
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if completed.returncode != 0:
        tail = log_path.read_text().splitlines()[-15:]
        raise RuntimeError(f"command failed (exit {completed.returncode}), log {log_path}:\n" + "\n".join(tail))


def finished_pretraining(run_dir: Path, steps: int) -> bool:
    """Whether ``run_dir`` holds a finished run_pretrain.py run of ``steps`` steps (resume: a run killed during its
    evaluation keeps its pretraining, and a later call only evaluates it)."""
    results_path = run_dir / "all_results.json"
    if not results_path.exists() or not (run_dir / "config.json").exists():
        return False
    return json.loads(results_path.read_text()).get("train_steps") == steps


def seconds_per_step(setting: str, overrides: dict, args: argparse.Namespace) -> float:
    """Calibrate ``--minutes``: a short run_pretrain.py run of ``setting``; cached per setting and batch size."""
    cache = Path(args.output_dir) / "calibration" / f"{setting}__bs{args.batch_size}.json"
    if cache.exists():
        return json.loads(cache.read_text())["seconds_per_step"]
    run_dir = Path(args.output_dir) / "calibration" / f"{setting}__bs{args.batch_size}"
    steps = args.calibration_steps
    run_logged(pretrain_command(args, overrides, steps, 0, run_dir), run_dir.with_suffix(".log"))
    results = json.loads((run_dir / "all_results.json").read_text())
    # includes the first (slow) step: a conservative rate, so the real run stays within its minutes
    value = results["train_runtime_s"] / max(results["train_steps"], 1)
    cache.write_text(json.dumps({"seconds_per_step": value, "steps": steps, "train_runtime_s":
                                 results["train_runtime_s"]}, indent=2))
    return value


# ---------------------------------------------------------------------------------------------- evaluation
def validation_splits(train, fraction: float, seed: int) -> dict:
    """Tuning protocol: ``{"train": ..., "test": <validation>}`` carved (stratified) out of the train part only.

    The images stay in the pretraining set (their labels are never used there); the test split is not touched.
    """
    from artstyle.data.common import stratified_split

    parts = stratified_split(train["label"], {"train": 1.0 - fraction, "validation": fraction}, seed=seed)
    return {"train": train.select(parts["train"]), "test": train.select(parts["validation"])}


def evaluation_splits(args: argparse.Namespace) -> tuple[dict, int]:
    """``({"train": ..., "test": <held-out>}, num_classes)`` for ``--eval_split``, limited by ``--max_*_images``."""
    from artstyle.data import load_style_dataset

    splits = load_style_dataset("imagefolder", data_dir=args.data_dir, test_size=args.test_size,
                                seed=args.split_seed)
    num_classes = splits["train"].features["label"].num_classes
    if args.eval_split == "validation":
        splits = validation_splits(splits["train"], args.test_size, args.split_seed)
    limited = {}
    for name, limit in (("train", args.max_train_images), ("test", args.max_test_images)):
        split = splits[name]
        if limit is not None and limit < len(split):  # evenly spaced: keeps every class (splits are class-ordered)
            split = split.select(sorted({round(i * (len(split) - 1) / max(limit - 1, 1)) for i in range(limit)}))
        limited[name] = split
    return limited, num_classes


def evaluate_encoder(encoder, args: argparse.Namespace, seed: int) -> dict:
    """Linear probe and kNN accuracy of ``encoder.pooler_output`` on the held-out split, and the fine-tune
    accuracy (`finetune_accuracy`) unless ``--finetune_epochs 0``."""
    import torch
    from torch.utils.data import DataLoader

    from artstyle import build_image_processor
    from artstyle.data import StyleImageDataset, collate_skip_bad
    from artstyle.evaluation import extract_features, knn_classify, train_linear_probe
    from artstyle.transforms import build_eval_transform

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder = encoder.to(device).eval()
    splits, num_classes = evaluation_splits(args)
    transform = build_eval_transform(build_image_processor(encoder.config))
    features = {}
    for name in ("train", "test"):
        loader = DataLoader(StyleImageDataset(splits[name], transform), batch_size=args.eval_batch_size,
                            shuffle=False, num_workers=args.num_workers, collate_fn=collate_skip_bad)
        features[name] = extract_features(encoder, loader)
    (train_x, train_y), (test_x, test_y) = features["train"], features["test"]
    knn_scores = knn_classify(train_x, train_y, test_x, num_classes, k=args.knn_k, temperature=args.knn_temperature)
    probe = train_linear_probe(train_x, train_y, num_classes, epochs=args.probe_epochs, learning_rate=args.probe_lr,
                               seed=seed)
    with torch.no_grad():
        probe_pred = probe(test_x.float()).argmax(dim=1)
        probe_train_acc = float((probe(train_x.float()).argmax(dim=1) == train_y).float().mean())
    result = {
        "linear_probe_acc": float((probe_pred == test_y).float().mean()),
        "linear_probe_train_acc": probe_train_acc,
        "knn_acc": float((knn_scores.argmax(dim=1) == test_y).float().mean()),
        "num_train": len(train_y), "num_test": len(test_y), "num_classes": num_classes,
        "feature_dim": int(train_x.shape[1]),
    }
    if args.finetune_epochs > 0:
        result.update(finetune_accuracy(encoder, splits, num_classes, args, seed, device))
    return result


def finetune_accuracy(encoder, splits: dict, num_classes: int, args: argparse.Namespace, seed: int,
                      device) -> dict:
    """The fixed fine-tune recipe (same for every setting): a classifier initialised from ``encoder`` (a copy; the
    encoder is not changed), trained on ``splits["train"]``, scored on ``splits["test"]``."""
    import copy

    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from artstyle import ArtStyleForImageClassification, build_image_processor
    from artstyle.data import StyleImageDataset, collate_skip_bad
    from artstyle.evaluation import layer_decay_param_groups
    from artstyle.training.schedules import cosine_lr
    from artstyle.transforms import build_eval_transform, build_train_transform

    config = copy.deepcopy(encoder.config)
    config.num_labels = num_classes
    torch.manual_seed(seed)
    model = ArtStyleForImageClassification(config)
    model.artstyle.load_state_dict(encoder.state_dict())
    model.to(device).train()
    processor = build_image_processor(config)
    train_transform = build_train_transform(processor, crop_scale=(args.finetune_crop_min, 1.0))
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(StyleImageDataset(splits["train"], train_transform), shuffle=True, generator=generator,
                              batch_size=args.finetune_batch_size, num_workers=args.num_workers,
                              collate_fn=collate_skip_bad)
    groups = layer_decay_param_groups(model, args.finetune_weight_decay, args.finetune_layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=args.finetune_lr, fused=True)
    total = args.finetune_epochs * len(train_loader)
    warmup = min(len(train_loader), total - 1)
    step, start = 0, time.perf_counter()
    for _ in range(args.finetune_epochs):
        for batch in train_loader:
            if batch is None:
                continue
            lr = cosine_lr(min(step, total - 1), total, warmup, args.finetune_lr, 1e-6)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            logits = model(batch["pixel_values"].to(device)).logits
            loss = F.cross_entropy(logits.float(), batch["labels"].to(device),
                                   label_smoothing=args.finetune_label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
    model.eval()
    test_loader = DataLoader(StyleImageDataset(splits["test"], build_eval_transform(processor)),
                             batch_size=args.eval_batch_size, shuffle=False, num_workers=args.num_workers,
                             collate_fn=collate_skip_bad)
    correct = count = 0
    with torch.no_grad():
        for batch in test_loader:
            if batch is None:
                continue
            predictions = model(batch["pixel_values"].to(device)).logits.argmax(dim=1).cpu()
            correct += int((predictions == batch["labels"]).sum())
            count += len(predictions)
    return {"finetune_acc": correct / max(count, 1), "finetune_steps": step,
            "finetune_runtime_s": round(time.perf_counter() - start, 1),
            "finetune_recipe": {"epochs": args.finetune_epochs, "lr": args.finetune_lr,
                                "batch": args.finetune_batch_size, "layer_decay": args.finetune_layer_decay,
                                "weight_decay": args.finetune_weight_decay, "crop_min": args.finetune_crop_min,
                                "label_smoothing": args.finetune_label_smoothing}}


def with_pooler(encoder, pooler: str):
    """A copy of ``encoder`` whose ``pooler_output`` is the read-out ``pooler``; every other weight is shared by value.
    Only the read-out's own parameters (``pooler_norm``, identity at init) may be new."""
    import copy

    from artstyle import ArtStyleModel

    if encoder.config.pooler not in READOUTS or pooler not in READOUTS:
        raise ValueError(f"read-outs switch between the poolers {READOUTS}; got {encoder.config.pooler!r} -> "
                         f"{pooler!r} (the fused poolers change pretraining)")
    config = copy.deepcopy(encoder.config)
    config.pooler = pooler
    other = ArtStyleModel(config)
    state = {key: value for key, value in encoder.state_dict().items()
             if hasattr(other, "pooler_norm") or not key.startswith("pooler_norm.")}  # "cls" has no read-out norm
    missing, unexpected = other.load_state_dict(state, strict=False)
    if unexpected or [key for key in missing if not key.startswith("pooler_norm.")]:
        raise RuntimeError(f"pooler {pooler!r} read-out: unexpected {unexpected}, missing {missing}")
    return other.to(next(encoder.parameters()).device).eval()


def readout_record(record: dict, encoder, readout: str, args: argparse.Namespace, seed: int) -> dict:
    """The record of ``record``'s encoder read out through pooler ``readout`` (setting ``<setting>@<readout>``)."""
    out = {**record, "setting": f"{record['setting']}@{readout}",
           "config": {**record["config"], "pooler": readout}, "readout_of": record["setting"]}
    eval_start = time.perf_counter()
    out.update(evaluate_encoder(with_pooler(encoder, readout), args, seed))
    out.update(eval_runtime_s=round(time.perf_counter() - eval_start, 1))
    return out


def run_one(setting: str, seed: int, args: argparse.Namespace) -> tuple[dict, object]:
    """``(record, encoder)`` of one (setting, seed); the encoder serves the read-outs."""
    import torch

    from artstyle import ArtStyleModel

    overrides = setting_overrides(setting, args)
    config = build_config(overrides, args.config_preset)
    if setting == "moco_v3":  # the ablation's baseline must be exactly the package's definition
        reference = describe(build_config(args.config_overrides, args.config_preset).moco_v3_baseline())
        if describe(config) != reference:
            raise RuntimeError(f"moco_v3 setting {describe(config)} differs from moco_v3_baseline() {reference}")
    record = {"version": RESULT_VERSION, "setting": setting, "seed": seed, "config_preset": args.config_preset,
              "config": describe(config), "overrides": overrides, "batch_size": args.batch_size,
              "augmentation": args.augmentation,
              "split": {"test_size": args.test_size, "seed": args.split_seed, "eval": args.eval_split}}
    start = time.perf_counter()
    if setting == "random_init":
        torch.manual_seed(seed)
        encoder = ArtStyleModel(config)
        record.update(train_steps=0, train_runtime_s=0.0)
    else:
        if args.max_steps is not None:
            steps = args.max_steps
        else:
            rate = seconds_per_step(setting, overrides, args)
            steps = max(1, int(args.minutes * 60 / rate))
            record.update(budget_minutes=args.minutes, calibrated_seconds_per_step=rate)
        run_dir = Path(args.output_dir) / "runs" / f"{setting}__seed{seed}"
        command = pretrain_command(args, overrides, steps, seed, run_dir)
        print(f"[{time.strftime('%H:%M:%S')}] pretrain {setting} seed {seed}: {steps} steps -> {run_dir}", flush=True)
        if finished_pretraining(run_dir, steps):
            print(f"  reusing the finished pretraining in {run_dir} ({steps} steps)", flush=True)
        else:
            run_logged(command, run_dir.with_suffix(".log"))
        pretrain = json.loads((run_dir / "all_results.json").read_text())
        record.update(command=shlex.join(command), pretrain_dir=str(run_dir),
                      **{k: v for k, v in pretrain.items() if k.startswith("train_")},
                      images_seen=pretrain.get("images_seen"), skipped_images=pretrain.get("skipped_images"))
        encoder = ArtStyleModel.from_pretrained(str(run_dir))
        if encoder.config.pooler != config.pooler:
            raise RuntimeError(f"{run_dir}: saved pooler {encoder.config.pooler!r}, expected {config.pooler!r}")
    print(f"[{time.strftime('%H:%M:%S')}] evaluate {setting} seed {seed}", flush=True)
    eval_start = time.perf_counter()
    record.update(evaluate_encoder(encoder, args, seed))
    record.update(steps=record["train_steps"], batch=args.batch_size, image_size=config.image_size)
    record.update(eval_runtime_s=round(time.perf_counter() - eval_start, 1),
                  total_runtime_s=round(time.perf_counter() - start, 1))
    return record, encoder


# ---------------------------------------------------------------------------------------------- report
def load_results(output_dir: Path) -> list[dict]:
    results = []
    for path in sorted((output_dir / "results").glob("*.json")):
        results.append(json.loads(path.read_text()))
    return results


def flat_record(record: dict) -> dict:
    """The table record: setting, seed, steps, batch, image_size, linear_probe_acc, knn_acc, finetune_acc."""
    values = {"steps": record.get("train_steps", 0), "batch": record.get("batch_size"),
              "image_size": record.get("config", {}).get("image_size")}
    return {name: record.get(name, values.get(name)) for name in RECORD_FIELDS}


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values) * 100
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(values) * 100:.1f}"


def paired_differences(results: list[dict], metric: str, setting: str = "full",
                       baseline: str = "moco_v3") -> dict | None:
    """Per seed present in both settings, ``setting − baseline`` of ``metric``; their mean and standard error
    (sample std / √n; ``None`` with one seed). ``None`` when no seed has both (or the metric is missing)."""
    by_seed = {name: {r["seed"]: r.get(metric) for r in results if r["setting"] == name}
               for name in (setting, baseline)}
    seeds = sorted(seed for seed in by_seed[setting] if seed in by_seed[baseline]
                   and by_seed[setting][seed] is not None and by_seed[baseline][seed] is not None)
    if not seeds:
        return None
    differences = [by_seed[setting][seed] - by_seed[baseline][seed] for seed in seeds]
    stderr = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else None
    return {"setting": setting, "baseline": baseline, "metric": metric, "seeds": seeds, "differences": differences,
            "mean": statistics.fmean(differences), "stderr": stderr,
            "wins": sum(d > 0 for d in differences), "ties": sum(d == 0 for d in differences)}


def report_pairs(results: list[dict]) -> list[tuple[str, str]]:
    """The paired tables of the report: full − moco_v3 as run (each with its own pooler), then, per read-out pooler
    both can be read through, full − moco_v3 under that same pooler (``<setting>@<pooler>``, or the setting itself
    when that is its own pooler), so the four components are also compared with the pooler held fixed."""
    own = {r["setting"]: r.get("config", {}).get("pooler") for r in results if "@" not in r["setting"]}
    names = {r["setting"] for r in results}

    def under(setting: str, pooler: str) -> str | None:
        name = setting if own.get(setting) == pooler else f"{setting}@{pooler}"
        return name if name in names else None

    pairs = [("full", "moco_v3")]
    for pooler in READOUTS:
        pair = (under("full", pooler), under("moco_v3", pooler))
        if None not in pair and pair not in pairs:
            pairs.append(pair)
    return pairs


def write_report(output_dir: Path) -> Path | None:
    results = load_results(output_dir)
    if not results:
        print("no result files yet")
        return None
    grouped: dict[str, list[dict]] = {}
    for record in results:
        grouped.setdefault(record["setting"], []).append(record)
    names = [s for s in ALL_SETTINGS if s in grouped] + sorted(s for s in grouped if s not in ALL_SETTINGS)
    lines = ["| setting | seeds | pretrain steps | pretrain min | linear probe acc (%) | kNN acc (%) | "
             "fine-tune acc (%) |", "|---|---|---|---|---|---|---|"]
    for name in names:
        runs = grouped[name]
        steps = statistics.fmean(r.get("train_steps", 0) for r in runs)
        minutes = statistics.fmean(r.get("train_runtime_s", 0.0) for r in runs) / 60
        finetune = [r["finetune_acc"] for r in runs if r.get("finetune_acc") is not None]
        lines.append(f"| {name} | {len(runs)} | {steps:.0f} | {minutes:.1f} | "
                     f"{mean_std([r['linear_probe_acc'] for r in runs])} | {mean_std([r['knn_acc'] for r in runs])} | "
                     f"{mean_std(finetune)} |")
    first = results[0]
    eval_splits = {r["split"].get("eval", "test") for r in results}
    if len(eval_splits) > 1:
        raise ValueError(f"{output_dir}: results evaluated on different splits {sorted(eval_splits)}; "
                         "keep tuning (validation) and test runs in separate output folders")
    held_out = ("VALIDATION (carved from the train part, for tuning; not the test split)"
                if eval_splits == {"validation"} else "test")
    seeds = sorted({r["seed"] for r in results})
    budgets = sorted({(r.get("train_steps", 0), r.get("batch_size")) for r in results if r["setting"] != "random_init"})
    recipe = next((r["finetune_recipe"] for r in results if r.get("finetune_recipe")), None)
    notes = [
        "",
        f"Evaluated on: {held_out}. Seeds: {seeds} ({len(seeds)}). Pretraining budget (steps, batch): "
        f"{budgets or 'none'}; image size {sorted({str(flat_record(r)['image_size']) for r in results})}.",
        f"Held-out split: stratified {1 - first['split']['test_size']:.0%}/{first['split']['test_size']:.0%}, "
        f"seed {first['split']['seed']} ({first['num_train']} train / {first['num_test']} held-out images, "
        f"{first['num_classes']} classes). Mean ± std over seeds (std only with ≥ 2 seeds). "
        f"Preset {first['config_preset']}, batch {first['batch_size']}, "
        f"augmentation {first.get('augmentation', 'moco_v3 (run_pretrain default)')}.",
        "Linear probe: artstyle.evaluation.train_linear_probe on frozen pooler_output features; kNN: weighted "
        "(k=20, T=0.07 unless changed) artstyle.evaluation.knn_classify.",
        f"Fine-tune (same recipe for every setting): {recipe or 'not run'}.",
    ]
    paired = [p for p in (paired_differences(results, key) for key, _ in METRICS) if p is not None]
    for setting, baseline in report_pairs(results):
        rows = [p for p in (paired_differences(results, key, setting, baseline) for key, _ in METRICS)
                if p is not None]
        if not rows:
            continue
        notes += ["", f"Paired difference {setting} − {baseline}, per seed (percentage points):", "",
                  "| metric | " + " | ".join(f"seed {s}" for s in rows[0]["seeds"])
                  + f" | mean | s.e. | {setting} wins |",
                  "|---|" + "---|" * (len(rows[0]["seeds"]) + 3)]
        for p in rows:
            stderr = "–" if p["stderr"] is None else f"{p['stderr'] * 100:.2f}"
            notes.append(f"| {dict(METRICS)[p['metric']]} | " + " | ".join(f"{d * 100:+.1f}" for d in p["differences"])
                         + f" | {p['mean'] * 100:+.2f} | {stderr} | {p['wins']}/{len(p['seeds'])} |")
    table = "\n".join(lines + notes) + "\n"
    (output_dir / "ablation.md").write_text(table)
    (output_dir / "ablation_records.json").write_text(json.dumps([flat_record(r) for r in results], indent=2))
    print(table)
    plot(output_dir / "ablation.png", names, grouped, chance=100 / first["num_classes"], paired=paired,
         subtitle=f"{held_out.split(' ')[0].lower()} split, {len(seeds)} seed(s), budget {budgets or 'none'}")
    return output_dir / "ablation.md"


def plot(path: Path, names: list[str], grouped: dict[str, list[dict]], chance: float, paired: list[dict] | None = None,
         subtitle: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [(key, label) for key, label in METRICS
               if all(r.get(key) is not None for runs in grouped.values() for r in runs)]
    width = 0.8 / len(metrics)
    columns = 2 if paired else 1
    figure, axes = plt.subplots(1, columns, figsize=(max(6.0, 1.1 * len(names) + 2) + 4 * (columns - 1), 4.4),
                                squeeze=False, gridspec_kw={"width_ratios": [2, 1][:columns]})
    axis = axes[0][0]
    for offset, (key, label) in enumerate(metrics):
        means, errors = [], []
        for name in names:
            values = [r[key] * 100 for r in grouped[name]]
            means.append(statistics.fmean(values))
            errors.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        positions = [i + (offset - (len(metrics) - 1) / 2) * width for i in range(len(names))]
        bars = axis.bar(positions, means, width, yerr=errors, capsize=3, label=label)
        axis.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    axis.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.1f}%)")
    axis.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    axis.set_ylabel("held-out accuracy (%)")
    axis.set_title(f"artstyle ablation (mean ± std over seeds)\n{subtitle}", fontsize=9)
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    top = max(r[k] * 100 for runs in grouped.values() for r in runs for k, _ in metrics)
    axis.set_ylim(0, math.ceil(top / 10 + 0.5) * 10)
    if paired:
        axis = axes[0][1]
        for index, p in enumerate(paired):
            axis.scatter([index] * len(p["differences"]), [d * 100 for d in p["differences"]], color="C0", s=14,
                         zorder=3)
            axis.errorbar([index], [p["mean"] * 100], yerr=[(p["stderr"] or 0.0) * 100], fmt="D", color="C3",
                          capsize=4, zorder=4)
        axis.axhline(0, color="grey", linewidth=1)
        axis.set_xticks(range(len(paired)), [dict(METRICS)[p["metric"]] for p in paired], fontsize=8)
        axis.set_ylabel("full − moco_v3 (points)")
        axis.set_title("paired per seed (dots), mean ± s.e.", fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------- main
def save_record(record: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)  # atomic: a half-written file never counts as done
    print(f"[{time.strftime('%H:%M:%S')}] {record['setting']} seed {record['seed']}: linear probe "
          f"{record['linear_probe_acc']:.3f}, kNN {record['knn_acc']:.3f} -> {path}", flush=True)


def saved_encoder(record: dict, args: argparse.Namespace):
    """The encoder a saved record was evaluated on (resume): its pretrained folder, or the seeded random init."""
    import torch

    from artstyle import ArtStyleModel

    if record["setting"] == "random_init":
        torch.manual_seed(record["seed"])
        return ArtStyleModel(build_config(record["overrides"], args.config_preset))
    return ArtStyleModel.from_pretrained(record["pretrain_dir"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    if output_dir.resolve().is_relative_to(REPO) and not args.dry_run:
        print(f"warning: --output_dir {output_dir} is inside the repository; keep runs outside it", file=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.report_only:
        write_report(output_dir)
        return 0
    (output_dir / "results").mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        for setting in args.settings:
            overrides = setting_overrides(setting, args)
            build_config(overrides, args.config_preset)  # validates
            for seed in args.seeds:
                if setting == "random_init":
                    print(f"{setting} seed {seed}: no pretraining; evaluate ArtStyleModel({overrides})")
                else:
                    steps = args.max_steps if args.max_steps is not None else f"<{args.minutes} min calibrated>"
                    print(shlex.join(map(str, pretrain_command(args, overrides, steps, seed,
                                                               output_dir / "runs" / f"{setting}__seed{seed}"))))
        return 0
    failures = 0
    for setting in args.settings:
        for seed in args.seeds:
            path = output_dir / "results" / f"{setting}__seed{seed}.json"
            encoder = None
            if path.exists():
                print(f"skip {setting} seed {seed}: {path} exists", flush=True)
                record = json.loads(path.read_text())
            else:
                try:
                    record, encoder = run_one(setting, seed, args)
                except Exception as error:  # keep going: the other settings are still worth having
                    failures += 1
                    print(f"FAILED {setting} seed {seed}: {error}", file=sys.stderr, flush=True)
                    continue
                save_record(record, path)
            for readout in args.readouts:  # the same encoder through another pooler (no pretraining)
                readout_path = output_dir / "results" / f"{setting}@{readout}__seed{seed}.json"
                if (readout == record["config"]["pooler"] or record["config"]["pooler"] not in READOUTS
                        or readout_path.exists()):
                    continue  # its own pooler, a fused pooler (not a read-out), or done by an earlier call
                try:
                    encoder = encoder if encoder is not None else saved_encoder(record, args)
                    save_record(readout_record(record, encoder, readout, args, seed), readout_path)
                except Exception as error:
                    failures += 1
                    print(f"FAILED {setting}@{readout} seed {seed}: {error}", file=sys.stderr, flush=True)
    write_report(output_dir)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
