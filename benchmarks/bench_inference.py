"""Inference cost of ``ArtStyleForImageClassification`` against the bare timm ViT, and pipeline throughput.

1. Model forward: ``ArtStyleForImageClassification(config)`` vs the timm ViT built by
   ``artstyle.modeling_artstyle.build_backbone(config)`` with a linear classifier of the same width
   (``reset_classifier(num_labels)``), on the same input tensor, eval mode, ``torch.no_grad()``, measurements
   interleaved, median of ``--steps`` after ``--warmup``.
2. End to end: a randomly initialised classifier and ``build_image_processor(config)`` (the fast, torchvision-based
   ``ViTImageProcessor``) are saved to a temporary folder and loaded twice, by
   ``transformers.pipeline("image-classification", model=folder, dtype=--pipeline_dtype)`` (the stock
   ``ImageClassificationPipeline``: ``pipeline_images_per_s``) and by the same call with
   ``pipeline_class=artstyle.pipelines.ArtStyleImageClassificationPipeline`` (the recommended one:
   ``artstyle_pipeline_images_per_s``). Both are fed ``--pipeline_images`` random PIL images (``--pipeline_image_size``
   px, decoded RGB; default: one batch) in batches of ``--pipeline_batch_size``, preprocessed by
   ``--pipeline_workers`` DataLoader workers (the pipeline's ``num_workers``; 0 = in the main process); images/s =
   images / median seconds per call over ``--pipeline_batches`` calls of each, interleaved. ``--precision`` applies to
   the model-forward comparison only. The host side of both (preprocess, collate, pickle, unbatch, postprocess: all
   but ``_forward``) is also timed in CPU time per image on one batch (``pipeline_host_us_per_image``), a measure that
   means something on a CPU-only machine too.
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


PIPELINES = {"stock": "transformers' ImageClassificationPipeline (plain pipeline(\"image-classification\"))",
             "artstyle": "pipeline(..., pipeline_class=ArtStyleImageClassificationPipeline)"}


def build_pipelines(folder: str, args: argparse.Namespace) -> dict:
    """The stock pipeline and the recommended one (`artstyle.pipelines`), same folder, device and dtype."""
    from transformers import pipeline

    from artstyle.pipelines import ArtStyleImageClassificationPipeline

    options = {"model": folder, "device": args.device, "dtype": DTYPES[args.pipeline_dtype]}
    return {"stock": pipeline("image-classification", **options),
            "artstyle": pipeline("image-classification", pipeline_class=ArtStyleImageClassificationPipeline,
                                 **options)}


def pipeline_throughput(pipelines: dict, args: argparse.Namespace) -> tuple[dict, dict]:
    """``({name: images/s}, {name: seconds per call})``, calls of the pipelines interleaved."""
    images = random_images(args.pipeline_images or args.pipeline_batch_size, args.pipeline_image_size, args.seed)
    options = {"batch_size": args.pipeline_batch_size, "num_workers": args.pipeline_workers}
    for classifier in pipelines.values():
        classifier(images[: args.pipeline_batch_size], **options)  # warm-up
    seconds = {name: [] for name in pipelines}
    for _ in range(args.pipeline_batches):
        for name, classifier in pipelines.items():
            synchronize(args.device)
            start = time.perf_counter()
            predictions = classifier(images, **options)
            synchronize(args.device)
            seconds[name].append(time.perf_counter() - start)
            if len(predictions) != len(images):
                raise RuntimeError(f"{name} pipeline returned {len(predictions)} predictions for {len(images)} images")
    return {name: len(images) / statistics.median(values) for name, values in seconds.items()}, seconds


def pipeline_host_us_per_image(pipelines: dict, args: argparse.Namespace, repeats: int = 5) -> dict:
    """CPU microseconds per image of each pipeline's host-side stages, run one after the other in this process on one
    batch: ``preprocess`` of every image (the DataLoader workers' work), the collation and the pickling of the batch
    (workers), and the unbatching and ``postprocess`` of the outputs (main process). ``_forward`` (the model, and the
    artstyle pipeline's batch normalisation, which runs on the model's device) is left out. One torch thread (as in
    a DataLoader worker) and process CPU time, so that other load on the machine counts less than in wall time;
    pipelines interleaved, median of ``repeats``."""
    from multiprocessing.reduction import ForkingPickler

    from transformers.pipelines.base import pad_collate_fn
    from transformers.pipelines.pt_utils import PipelineIterator

    images = random_images(args.pipeline_batch_size, args.pipeline_image_size, args.seed)
    count = len(images)
    spent = {name: [] for name in pipelines}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for _ in range(repeats):
        for name, classifier in pipelines.items():
            collate = pad_collate_fn(None, classifier.image_processor)
            start = time.process_time()
            batch = collate([classifier.preprocess(image) for image in images])
            bytes(ForkingPickler.dumps(batch))
            host = time.process_time() - start
            outputs = classifier.forward(batch)
            start = time.process_time()
            items = PipelineIterator([outputs], lambda unbatched: unbatched, {}, loader_batch_size=count)
            for item in items:
                classifier.postprocess(item)
            spent[name].append(host + time.process_time() - start)
    torch.set_num_threads(threads)
    return {name: 1e6 * statistics.median(values) / count for name, values in spent.items()}


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
        pipelines = build_pipelines(folder, args)
        pipeline_rates, pipeline_seconds = pipeline_throughput(pipelines, args)
        images_per_s, seconds = pipeline_rates["stock"], pipeline_seconds["stock"]
        count = args.pipeline_images or args.pipeline_batch_size
        for name, rate in pipeline_rates.items():
            print(f"pipeline {name:<8} {count} PIL images ({args.pipeline_image_size} px) per call, batch "
                  f"{args.pipeline_batch_size}, {args.pipeline_workers} workers, {args.pipeline_dtype}: median "
                  f"{statistics.median(pipeline_seconds[name]):.4f} s over {len(pipeline_seconds[name])} calls = "
                  f"{rate:.1f} images/s [{PIPELINES[name]}] (bare model: {args.batch_size / medians['timm']:.1f} "
                  f"images/s at --precision {args.precision})")
        host = pipeline_host_us_per_image(pipelines, args)
        host_ratio = host["stock"] / host["artstyle"]
        print(f"pipeline host side (preprocess + collate + pickle + unbatch + postprocess, CPU time, model excluded): "
              f"stock {host['stock']:.0f} us/image, artstyle {host['artstyle']:.0f} us/image, "
              f"stock/artstyle {host_ratio:.2f}")
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
                       "pipeline_images_per_s_measures": PIPELINES["stock"],
                       "artstyle_pipeline_images_per_s": pipeline_rates["artstyle"],
                       "artstyle_pipeline_seconds": pipeline_seconds["artstyle"],
                       "pipeline_host_us_per_image": host, "pipeline_host_ratio": host_ratio,
                       "predict_images_per_s": predict_images_per_s, "predict_load_s": load_seconds,
                       "predict_images_per_s_after_load": predict_after_load}, handle, indent=2)
    print(f"inference_ratio={ratio:.3f} pipeline_images_per_s={images_per_s:.1f}", flush=True)
    return {"inference_ratio": ratio, "pipeline_images_per_s": images_per_s,
            "artstyle_pipeline_images_per_s": pipeline_rates["artstyle"], "pipeline_host_us_per_image": host,
            "predict_images_per_s": predict_images_per_s, "predict_load_s": load_seconds,
            "predict_images_per_s_after_load": predict_after_load}


if __name__ == "__main__":
    main(sys.argv[1:])
