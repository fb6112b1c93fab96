"""Inference cost of ``ArtStyleForImageClassification`` against the bare timm ViT, and pipeline throughput.

1. Model forward: ``ArtStyleForImageClassification(config)`` vs the timm ViT built by
   ``artstyle.modeling_artstyle.build_backbone(config)`` with a linear classifier of the same width
   (``reset_classifier(num_labels)``), on the same input tensor, eval mode, ``torch.no_grad()``, measurements
   interleaved, median of ``--steps`` after ``--warmup``.
2. End to end: a randomly initialised classifier and ``build_image_processor(config)`` are saved to a temporary
   folder, loaded by ``transformers.pipeline("image-classification", model=folder)`` and fed batches of
   ``--pipeline_batch_size`` random PIL images (``--pipeline_image_size`` px, decoded RGB); images/s = batch size /
   median seconds per batch. The pipeline runs in fp32: ``--precision`` applies to the model-forward comparison.

The last line of the output is exactly ``inference_ratio=<artstyle/timm> pipeline_images_per_s=<images/s>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from artstyle import ArtStyleConfig, ArtStyleForImageClassification, build_image_processor
from artstyle.modeling_artstyle import build_backbone

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_arguments, autocast_context, check_common_arguments, setup, synchronize  # noqa: E402

TARGET_RATIO = 1.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(parser, batch_help="Batch of the model-forward comparison.")
    parser.add_argument("--pooler", default=None, choices=["cls", "fused", "fused_style"],
                        help="Override the preset's pooler (default: the preset's, i.e. cls).")
    parser.add_argument("--num_labels", type=int, default=12)
    parser.add_argument("--pipeline_batch_size", type=int, default=32)
    parser.add_argument("--pipeline_batches", type=int, default=5, help="Measured pipeline batches (median).")
    parser.add_argument("--pipeline_image_size", type=int, default=160, help="Side of the random PIL images.")
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if args.pipeline_batches < 1 or args.pipeline_batch_size < 1:
        parser.error("--pipeline_batches and --pipeline_batch_size must be >= 1")
    return args


def build_config(args: argparse.Namespace) -> ArtStyleConfig:
    overrides = {"num_labels": args.num_labels}
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.pooler is not None:
        overrides["pooler"] = args.pooler
    return ArtStyleConfig.from_preset(args.config_preset, **overrides)


def time_forwards(models: dict[str, callable], args: argparse.Namespace) -> dict[str, list[float]]:
    times = {name: [] for name in models}
    with torch.no_grad(), autocast_context(args.device, args.precision):
        for _ in range(args.warmup):
            for forward in models.values():
                forward()
        for _ in range(args.steps):  # interleaved
            for name, forward in models.items():
                synchronize(args.device)
                start = time.perf_counter()
                forward()
                synchronize(args.device)
                times[name].append(time.perf_counter() - start)
    return times


def random_images(count: int, size: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB") for _ in range(count)]


def pipeline_throughput(config: ArtStyleConfig, args: argparse.Namespace) -> tuple[float, list[float]]:
    from transformers import pipeline

    with tempfile.TemporaryDirectory() as folder:
        model = ArtStyleForImageClassification(config)
        model.save_pretrained(folder)
        build_image_processor(config).save_pretrained(folder)
        classifier = pipeline("image-classification", model=folder, device=args.device)
        images = random_images(args.pipeline_batch_size, args.pipeline_image_size, args.seed)
        batch = args.pipeline_batch_size
        classifier(images, batch_size=batch)  # warm-up
        seconds = []
        for _ in range(args.pipeline_batches):
            synchronize(args.device)
            start = time.perf_counter()
            predictions = classifier(images, batch_size=batch)
            synchronize(args.device)
            seconds.append(time.perf_counter() - start)
        if len(predictions) != len(images):
            raise RuntimeError(f"pipeline returned {len(predictions)} predictions for {len(images)} images")
    return batch / statistics.median(seconds), seconds


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup(args)
    config = build_config(args)
    device = torch.device(args.device)
    artstyle_model = ArtStyleForImageClassification(config).to(device).eval()
    timm_model = build_backbone(config)
    timm_model.reset_classifier(config.num_labels)
    timm_model = timm_model.to(device).eval()
    pixel_values = torch.randn(args.batch_size, 3, config.image_size, config.image_size, device=device)
    models = {"timm": lambda: timm_model(pixel_values),
              "artstyle": lambda: artstyle_model(pixel_values=pixel_values).logits}

    print(f"# artstyle inference benchmark | preset={args.config_preset} backbone={config.backbone} "
          f"image_size={config.image_size} patch={config.patch_size} pooler={config.pooler} "
          f"fusion={'on' if artstyle_model.artstyle.fusion is not None else 'off'} "
          f"gram={'on' if artstyle_model.artstyle.gram is not None else 'off'} batch={args.batch_size} "
          f"device={args.device} precision={args.precision} torch={torch.__version__} "
          f"threads={torch.get_num_threads()}", flush=True)
    times = time_forwards(models, args)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name:<9} median {medians[name]:.4f} s  min {min(values):.4f}  max {max(values):.4f}  "
              f"images/s {args.batch_size / medians[name]:.1f}", flush=True)
    ratio = medians["artstyle"] / medians["timm"]
    print(f"# target inference_ratio <= {TARGET_RATIO:.2f}: {ratio:.3f} {'ok' if ratio <= TARGET_RATIO else 'MISSED'}")

    images_per_s, seconds = pipeline_throughput(config, args)
    print(f"pipeline  {args.pipeline_batch_size} PIL images ({args.pipeline_image_size} px) per call: median "
          f"{statistics.median(seconds):.4f} s over {len(seconds)} calls (preprocessing + model + postprocessing)")
    print("# noise: shared machine; the two forwards are interleaved, compare the ratio rather than absolute times")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "times_s": times, "medians_s": medians, "inference_ratio": ratio,
                       "pipeline_seconds": seconds, "pipeline_images_per_s": images_per_s}, handle, indent=2)
    print(f"inference_ratio={ratio:.3f} pipeline_images_per_s={images_per_s:.1f}", flush=True)
    return {"inference_ratio": ratio, "pipeline_images_per_s": images_per_s}


if __name__ == "__main__":
    main(sys.argv[1:])
