"""Which positive pairs could make pretraining beat a random encoder on the built-in demo? (issue 10, item 6)

A diagnostic, not a training recipe. It pretrains a demo model (``--config_preset``: ``tiny``, the demo's until the
thirteenth CPU session and what the earlier records used, or ``demo``, the current one; batch 32, AdamW, the cosine
learning rate with 10 % warmup and the teacher-momentum schedule of ``run_pretrain.py``) on the demo's train split
and, every ``--eval_every`` steps, scores the frozen ``pooler_output`` on the validation split: the kNN of
``run_pretrain.py --eval_every`` (k 20, T 0.07, the train split as reference) and a linear probe
(`artstyle.evaluation.train_linear_probe`, the ``run_finetune.py --linear_probe`` head). The test split is never
rendered. Step 0 is the random encoder that ``run_finetune.py --model_name_or_path none`` starts from.

``--positives`` picks the image the second view is cut from:

- ``same``: the same image (self-supervised pretraining, what ``run_pretrain.py`` does);
- ``same_style``: another train image of the same style, **chosen with the labels**. No unlabelled pair
  construction (crops, tiles, a demo design) can hand the objective a cleaner style signal, so this is an upper
  bound on what changing the demo's pairs could do at this budget;
- ``random``: a random other train image (no signal at all): how far the optimisation alone moves the features.

``--objective supervised`` replaces the self-supervised objective by the labels themselves: a linear head on
``pooler_output`` trained with cross-entropy on one augmented view per image, with the same optimiser, schedule and
augmentation (``--positives`` must stay ``same``). This is the upper bound of all upper bounds: if even training on
the labels for the demo's budget does not lift the frozen read-out above the random encoder's, no pretraining
objective can at that budget.

Both views come from the package's own augmentation (`artstyle.gpu_augment.GPUTwoViewAugment`, which runs on the
CPU too), preset ``--augmentation``. One JSON line per evaluation on stdout and in ``--output``.

    python benchmarks/demo_positives.py --positives same_style --steps 104 --output /tmp/same_style.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from artstyle import CONFIG_PRESETS, ArtStyleConfig
from artstyle.data.common import split_fractions, stratified_split
from artstyle.data.demo import DEMO_STYLES, DemoStyleConfig, demo_labels, render_demo_image
from artstyle.evaluation import knn_classify
from artstyle.evaluation.probe import train_linear_probe
from artstyle.gpu_augment import GPUTwoViewAugment
from artstyle.modeling_artstyle import ArtStyleForPretraining
from artstyle.training.optim import build_optimizer, param_groups_no_decay, set_learning_rate
from artstyle.training.schedules import cosine_lr, momentum_schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import check_config_overrides  # noqa: E402

POSITIVES = ("same", "same_style", "random")
OBJECTIVES = ("self_supervised", "supervised")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positives", default="same", choices=POSITIVES)
    parser.add_argument("--objective", default="self_supervised", choices=OBJECTIVES,
                        help="self_supervised (the model's pretraining loss) or supervised (labels, cross-entropy)")
    parser.add_argument("--steps", type=int, default=104, help="optimisation steps (the demo's default run: 104)")
    parser.add_argument("--eval_every", type=int, default=26)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--weight_decay", type=float, default=0.1)
    parser.add_argument("--optimizer", default="adamw", choices=("adamw", "lars"), help="as run_pretrain.py")
    parser.add_argument("--augmentation", default="moco_v3", choices=("moco_v3", "style_preserving"))
    parser.add_argument("--config_preset", default="tiny", choices=CONFIG_PRESETS,
                        help="ArtStyleConfig preset (the records before it existed used tiny)")
    parser.add_argument("--config_overrides", default="{}", help="JSON object of preset overrides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_images", type=int, default=DemoStyleConfig.num_images,
                        help="size of the demo set (the demo's default; 70 %% train, 15 %% validation)")
    parser.add_argument("--output", default=None, help="JSON-lines file of the evaluations")
    args = parser.parse_args(argv)
    for name in ("steps", "eval_every", "batch_size", "num_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    check_config_overrides(parser, args.config_overrides)
    if args.objective == "supervised" and args.positives != "same":
        parser.error(f"--positives {args.positives} applies to --objective self_supervised only (a supervised step "
                     "reads one view and its label)")
    return args


def render_split(name: str, num_images: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[N, 3, S, S]`` images and labels of one split of the demo (seed 0, the builder's split)."""
    defaults = DemoStyleConfig()
    labels = demo_labels(num_images)
    parts = stratified_split(labels, split_fractions(defaults.test_size, defaults.validation_size), seed=defaults.seed)
    images = [np.asarray(render_demo_image(DEMO_STYLES[labels[i]], defaults.seed, i, image_size)) for i in parts[name]]
    return (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
            torch.tensor([labels[i] for i in parts[name]]))


def partners(labels: torch.Tensor, batch: torch.Tensor, positives: str, generator: torch.Generator) -> torch.Tensor:
    """Index of the image each second view is cut from (see the module docstring)."""
    if positives == "same":
        return batch
    out = []
    for i in batch.tolist():
        allowed = torch.arange(len(labels)) != i
        if positives == "same_style":
            allowed &= labels == labels[i]
        pool = allowed.nonzero().flatten()
        out.append(pool[torch.randint(len(pool), (1,), generator=generator)].item())
    return torch.tensor(out)


def supervised_loss(model, views: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``--objective supervised``: cross-entropy of the linear head on the encoder's read-out of ``views``."""
    return F.cross_entropy(model.classifier(model.artstyle(views).pooler_output), labels)


@torch.no_grad()
def evaluate(model, augment, train, val, step: int, loss: float | None, seed: int) -> dict:
    model.eval()
    feats = []
    for images, _ in (train, val):
        x = (images.float() / 255 - augment.mean) / augment.std
        feats.append(torch.cat([model.artstyle(x[k:k + 128]).pooler_output for k in range(0, len(x), 128)]))
    model.train()
    (train_x, train_y), (val_x, val_y) = (feats[0], train[1]), (feats[1], val[1])
    num_classes = len(DEMO_STYLES)
    scores = knn_classify(F.normalize(train_x, dim=-1), train_y, F.normalize(val_x, dim=-1), num_classes)
    with torch.enable_grad():
        head = train_linear_probe(train_x, train_y, num_classes, seed=seed)
    record = {"step": step, "knn": (scores.argmax(-1) == val_y).float().mean().item(),
              "linear_probe": (head(val_x).argmax(-1) == val_y).float().mean().item()}
    if loss is not None:
        record["loss"] = loss
    return record


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    config = ArtStyleConfig.from_preset(  # queue 210: as run_pretrain lowers it for the demo
        args.config_preset, **{"queue_size": 210, **json.loads(args.config_overrides)})
    model = ArtStyleForPretraining(config).train()
    trained = model
    if args.objective == "supervised":  # the same encoder init as the self-supervised runs, plus a linear head
        model.classifier = torch.nn.Linear(model.artstyle.pooler_dim, len(DEMO_STYLES))
        trained = torch.nn.ModuleDict({"artstyle": model.artstyle, "classifier": model.classifier})
    optimizer = build_optimizer(param_groups_no_decay(trained, args.weight_decay), args.optimizer,
                                lr=args.learning_rate)
    augment = GPUTwoViewAugment(args.augmentation, config.image_size, config.image_mean, config.image_std)
    train = render_split("train", args.num_images, config.image_size)
    val = render_split("validation", args.num_images, config.image_size)
    generator = torch.Generator().manual_seed(args.seed)
    records, losses, order, start = [], [], torch.empty(0, dtype=torch.long), time.perf_counter()

    def log(record):
        record.update(objective=args.objective, positives=args.positives, seed=args.seed, optimizer=args.optimizer,
                      lr=args.learning_rate, augmentation=args.augmentation,
                      config_preset=args.config_preset, config_overrides=json.loads(args.config_overrides),
                      total_steps=args.steps, seconds=round(time.perf_counter() - start, 1))
        records.append(record)
        print(json.dumps(record), flush=True)
        if args.output:
            with open(args.output, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    log(evaluate(model, augment, train, val, 0, None, args.seed))
    for step in range(args.steps):
        if len(order) < args.batch_size:
            order = torch.randperm(len(train[1]), generator=generator)
        batch, order = order[:args.batch_size], order[args.batch_size:]
        view1, _ = augment(train[0][batch], generator)
        set_learning_rate(optimizer, cosine_lr(step, args.steps, args.steps // 10, args.learning_rate))
        if args.objective == "supervised":
            loss = supervised_loss(model, view1, train[1][batch])
        else:
            _, view2 = augment(train[0][partners(train[1], batch, args.positives, generator)], generator)
            loss = model(view1, view2, momentum=momentum_schedule(step, args.steps, config.momentum_base,
                                                                  config.momentum_final)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            log(evaluate(model, augment, train, val, step + 1, float(np.mean(losses[-10:])), args.seed))
    return records


if __name__ == "__main__":
    main()
