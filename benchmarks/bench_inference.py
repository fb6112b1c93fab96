"""Inference cost of ``ArtStyleForImageClassification`` against the bare timm ViT, and pipeline throughput.

1. Model forward: ``ArtStyleForImageClassification(config)`` vs the timm ViT built by
   ``artstyle.modeling_artstyle.build_backbone(config)`` with a linear classifier of the same width
   (``reset_classifier(num_labels)``), on the same input tensor, eval mode, ``torch.no_grad()``, measurements
   interleaved, median of ``--steps`` after ``--warmup``.
2. End to end: a randomly initialised classifier and ``build_image_processor(config)`` (the fast, torchvision-based
   ``ViTImageProcessor``) are saved to a temporary folder, loaded by
   ``transformers.pipeline("image-classification", model=folder, dtype=--pipeline_dtype)`` and fed
   ``--pipeline_images`` random PIL images (``--pipeline_image_size`` px, decoded RGB; default: one batch) in batches
   of ``--pipeline_batch_size``, preprocessed by ``--pipeline_workers`` DataLoader workers (the pipeline's
   ``num_workers``; 0 = in the main process); images/s = images / median seconds per call over
   ``--pipeline_batches`` calls. ``--precision`` applies to the model-forward comparison only.
3. ``--predict_images N``: the same folder through ``artstyle-predict`` (``artstyle.cli.predict_main`` called in this
   process: image listing, decoding, pipeline, JSON output; ``--dtype`` from ``--pipeline_dtype``) on a folder of N
   JPEG files; images/s = N / wall time of the call, model loading included. The loading alone (classifier in that
   dtype to the device, and the image processor) is timed just before, and ``predict_images_per_s_after_load`` =
   N / (wall time - loading time) estimates the streaming rate.

Images/s of the bare model (``timm`` row, ``--batch_size`` per forward) are printed next to the pipeline's.

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
from _common import (  # noqa: E402
    add_common_arguments,
    autocast_context,
    check_common_arguments,
    config_overrides,
    setup,
    synchronize,
)

TARGET_RATIO = 1.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(parser, batch_help="Batch of the model-forward comparison.")
    parser.add_argument("--pooler", default=None, choices=["cls", "fused", "fused_style", "gram_diag", "cls_gram_diag"],
                        help="Override the preset's pooler (default: the preset's, i.e. cls_gram_diag).")
    parser.add_argument("--num_labels", type=int, default=12)
    parser.add_argument("--pipeline_batch_size", type=int, default=32)
    parser.add_argument("--pipeline_batches", type=int, default=5, help="Measured pipeline batches (median).")
    parser.add_argument("--pipeline_image_size", type=int, default=160, help="Side of the random PIL images.")
    parser.add_argument("--pipeline_images", type=int, default=None,
                        help="Images per pipeline call (default: --pipeline_batch_size).")
    parser.add_argument("--pipeline_workers", type=int, default=0, help="The pipeline's num_workers.")
    parser.add_argument("--pipeline_dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="dtype the pipeline loads the model in.")
    parser.add_argument("--predict_images", type=int, default=0,
                        help="Also time artstyle-predict on a folder of this many JPEG images (0: skip).")
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if args.pipeline_batches < 1 or args.pipeline_batch_size < 1:
        parser.error("--pipeline_batches and --pipeline_batch_size must be >= 1")
    if args.pipeline_images is not None and args.pipeline_images < 1:
        parser.error(f"--pipeline_images must be >= 1, got {args.pipeline_images}")
    if args.pipeline_workers < 0 or args.predict_images < 0:
        parser.error("--pipeline_workers and --predict_images must be >= 0")
    return args


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_config(args: argparse.Namespace) -> ArtStyleConfig:
    overrides = {"num_labels": args.num_labels, **config_overrides(args)}
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


def pipeline_throughput(folder: str, args: argparse.Namespace) -> tuple[float, list[float]]:
    from transformers import pipeline

    classifier = pipeline("image-classification", model=folder, device=args.device, dtype=DTYPES[args.pipeline_dtype])
    images = random_images(args.pipeline_images or args.pipeline_batch_size, args.pipeline_image_size, args.seed)
    options = {"batch_size": args.pipeline_batch_size, "num_workers": args.pipeline_workers}
    classifier(images[: args.pipeline_batch_size], **options)  # warm-up
    seconds = []
    for _ in range(args.pipeline_batches):
        synchronize(args.device)
        start = time.perf_counter()
        predictions = classifier(images, **options)
        synchronize(args.device)
        seconds.append(time.perf_counter() - start)
    if len(predictions) != len(images):
        raise RuntimeError(f"pipeline returned {len(predictions)} predictions for {len(images)} images")
    return len(images) / statistics.median(seconds), seconds


PREDICT_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def predict_throughput(folder: str, args: argparse.Namespace) -> tuple[float, float]:
    """(images/s of ``artstyle-predict <folder of JPEGs> --json`` in process, model loading included; seconds the
    loading alone takes)."""
    import contextlib
    import io

    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from artstyle.cli import PREDICT_DTYPES, predict_main

    dtype = PREDICT_DTYPE[args.pipeline_dtype]
    start = time.perf_counter()
    AutoModelForImageClassification.from_pretrained(folder, dtype=PREDICT_DTYPES[dtype]).to(args.device)
    AutoImageProcessor.from_pretrained(folder, use_fast=True)
    synchronize(args.device)
    load_seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as images_folder:
        for index, image in enumerate(random_images(args.predict_images, args.pipeline_image_size, args.seed + 1)):
            image.save(Path(images_folder) / f"{index:05d}.jpg", quality=90)
        argv = [images_folder, "--model", folder, "--batch_size", str(args.pipeline_batch_size), "--json",
                "--device", args.device, "--dtype", dtype]
        output = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(output):
            code = predict_main(argv)
        seconds = time.perf_counter() - start
    results = json.loads(output.getvalue())["results"]
    if code != 0 or len(results) != args.predict_images:
        raise RuntimeError(f"artstyle-predict exited {code} with {len(results)} of {args.predict_images} results")
    return args.predict_images / seconds, load_seconds


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

    predict_images_per_s = predict_after_load = load_seconds = None
    with tempfile.TemporaryDirectory() as folder:
        ArtStyleForImageClassification(config).save_pretrained(folder)
        build_image_processor(config).save_pretrained(folder)
        images_per_s, seconds = pipeline_throughput(folder, args)
        count = args.pipeline_images or args.pipeline_batch_size
        print(f"pipeline  {count} PIL images ({args.pipeline_image_size} px) per call, batch "
              f"{args.pipeline_batch_size}, {args.pipeline_workers} workers, {args.pipeline_dtype}: "
              f"median {statistics.median(seconds):.4f} s over {len(seconds)} calls = {images_per_s:.1f} images/s "
              f"(bare model: {args.batch_size / medians['timm']:.1f} images/s at --precision {args.precision})")
        if args.predict_images:
            predict_images_per_s, load_seconds = predict_throughput(folder, args)
            remaining = args.predict_images / predict_images_per_s - load_seconds
            predict_after_load = args.predict_images / remaining if remaining > 0 else None
            after = f"{predict_after_load:.1f}" if predict_after_load else "n/a"
            print(f"artstyle-predict  folder of {args.predict_images} JPEG images ({args.pipeline_image_size} px), "
                  f"batch {args.pipeline_batch_size}, {PREDICT_DTYPE[args.pipeline_dtype]}: {predict_images_per_s:.1f} "
                  f"images/s (model loading included; loading alone {load_seconds:.2f} s, so about {after} images/s "
                  f"after it)")
    print("# noise: shared machine; the two forwards are interleaved, compare the ratio rather than absolute times")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "times_s": times, "medians_s": medians, "inference_ratio": ratio,
                       "model_images_per_s": args.batch_size / medians["timm"],
                       "artstyle_images_per_s": args.batch_size / medians["artstyle"],
                       "pipeline_seconds": seconds, "pipeline_images_per_s": images_per_s,
                       "predict_images_per_s": predict_images_per_s, "predict_load_s": load_seconds,
                       "predict_images_per_s_after_load": predict_after_load}, handle, indent=2)
    print(f"inference_ratio={ratio:.3f} pipeline_images_per_s={images_per_s:.1f}", flush=True)
    return {"inference_ratio": ratio, "pipeline_images_per_s": images_per_s,
            "predict_images_per_s": predict_images_per_s, "predict_load_s": load_seconds,
            "predict_images_per_s_after_load": predict_after_load}


if __name__ == "__main__":
    main(sys.argv[1:])
