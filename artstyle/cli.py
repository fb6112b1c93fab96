"""Command-line tools: ``artstyle-predict`` (style classification) and ``artstyle-similar`` (style search).

Both return a process exit code: 0 on success, 1 when some inputs could not be read (they are
reported, the others are still processed), 2 for usage errors (missing model, bad arguments), which
are reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, NoReturn

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import pil_to_tensor
from transformers import AutoImageProcessor, AutoModelForImageClassification
from transformers.utils import logging as hf_logging

from artstyle.plots import plot_contact_sheet
from artstyle.processing import preprocess_on_device
from artstyle.search import (
    StyleEmbedder,
    build_index,
    default_device,
    list_images,
    load_image,
    load_index,
    resolve_num_workers,
)

logger = logging.getLogger(__name__)


class ArgumentParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (``<prog>: error: ...``) and exit code 2, without the usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def expand_inputs(inputs: Sequence[str], recursive: bool = True) -> tuple[list[str], list[dict]]:
    """Files, folders (their images) and URLs -> ``(sources, errors)``; missing paths become errors."""
    sources, errors = [], []
    for item in inputs:
        path = Path(item)
        if _is_url(item) or path.is_file():
            sources.append(item)
        elif path.is_dir():
            images = list_images(path, recursive=recursive)
            if not images:
                errors.append({"path": item, "error": "folder contains no image files"})
            sources.extend(str(image) for image in images)
        else:
            errors.append({"path": item, "error": "no such file or folder"})
    return sources, errors


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _workers(value: str) -> int | str:
    """``--dataloader_num_workers``: ``auto`` or an integer >= 0 (argparse type)."""
    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer >= 0, got {value!r}")
    return number


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        format="%(levelname)s %(name)s: %(message)s", level=logging.INFO if verbose else logging.WARNING
    )
    if not verbose:
        hf_logging.disable_progress_bar()


def _check_model_dir(model: str) -> None:
    """A model argument that looks like a local path must exist (else it would be tried on the Hub)."""
    looks_local = model.startswith((".", "/", "~")) or Path(model).exists() or model.count("/") > 1
    if looks_local and not (Path(model).expanduser() / "config.json").is_file():
        raise FileNotFoundError(f"--model {model}: no config.json there (not a saved artstyle model folder)")


# ----------------------------------------------------------------------------------------------
# artstyle-predict
# ----------------------------------------------------------------------------------------------


def build_predict_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="artstyle-predict",
        description="Predict the style of images with a fine-tuned artstyle classifier.",
    )
    parser.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or http(s) URLs")
    parser.add_argument(
        "--model", default="outputs/finetune", help="classifier folder or Hub id (default: %(default)s)"
    )
    parser.add_argument("--top_k", type=int, default=5, help="styles shown per image (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=16, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--dataloader_num_workers", type=_workers, default="auto",
                        help="processes decoding images in parallel; auto: none for up to two batches of images, "
                             "else min(8, CPU cores - 1) (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--device", default=None, help="torch device (default: accelerator if available, else cpu)")
    parser.add_argument("--dtype", default="float32", choices=sorted(PREDICT_DTYPES),
                        help="dtype the classifier is loaded in and runs at (transformers' `dtype`); bfloat16 is "
                             "several times faster on a recent GPU (default: %(default)s)")
    parser.add_argument("--verbose", action="store_true", help="log progress")
    return parser


class _DecodedImages(Dataset):
    """Item ``i``: ``(i, uint8 tensor [3, H, W] or None, error or None)`` for ``sources[i]`` (decoded in workers)."""

    def __init__(self, sources: Sequence[str]):
        self.sources = list(sources)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int):
        try:
            return index, pil_to_tensor(load_image(self.sources[index])), None
        except (ValueError, OSError, Image.DecompressionBombError) as err:
            return index, None, str(err)


class _DecodedBatch(NamedTuple):
    """A batch of `_DecodedImages` items, as the workers hand it over."""

    indices: list[int]  # of the decoded images, in order
    images: torch.Tensor | list[torch.Tensor]  # uint8 [B, 3, H, W] when all have one shape, else [3, H, W] each
    errors: list[tuple[int, str]]  # (index, error) of the images that could not be read


def _collate_decoded(items: list) -> _DecodedBatch:
    """Runs in the worker: same-shape images are stacked there, so one shared-memory block per batch reaches the main
    process instead of one per image (receiving 128 separate tensors cost the main process 151 us per image on our
    CPU, one stacked tensor 22; benchmarks/README.md)."""
    decoded = [(i, image) for i, image, _ in items if image is not None]
    errors = [(i, error) for i, image, error in items if image is None]
    images = [image for _, image in decoded]
    if images and len({tuple(image.shape) for image in images}) == 1:
        images = torch.stack(images)
    return _DecodedBatch([i for i, _ in decoded], images, errors)


PREDICT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _to_device(images: torch.Tensor | list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 images (a stacked ``[B, 3, H, W]`` batch or a list) to ``device`` as a list: same-shape images in ONE
    copy of their stack, pinned on CUDA (an asynchronous copy), instead of one blocking copy per image."""
    if isinstance(images, list):
        if device.type == "cpu" or len({tuple(image.shape) for image in images}) > 1:
            return [image.to(device, non_blocking=True) for image in images]
        images = torch.stack(images)
    if device.type == "cuda" and not images.is_pinned():
        images = images.pin_memory()
    return list(images.to(device, non_blocking=True).unbind(0))


def predict(
    sources: Sequence[str], model: str, top_k: int = 5, batch_size: int = 16, device: str | None = None,
    num_workers: int | str = "auto", dtype: str = "float32",
) -> tuple[list[dict], list[dict]]:
    """Classify ``sources`` (paths or URLs) -> ``(results, errors)``.

    Images are decoded by a DataLoader (``num_workers`` processes; ``"auto"``: `artstyle.search.resolve_num_workers`)
    into uint8 tensors, stacked per batch in the workers, and preprocessed in batches by the model's fast image
    processor on the model's device. The workers start before the model loads (decoding overlaps the loading), and on
    an accelerator the next batch is copied and queued before the previous batch's scores are read back, so the
    device computes while the host prepares. Scores are those of ``pipeline("image-classification")``: softmax
    (sigmoid for multi-label models) of the logits.
    ``results``: ``[{"path", "predictions": [{"label", "score"}, ...]}]`` in input order;
    ``errors``: ``[{"path", "error"}]`` for inputs that could not be read.
    ``dtype``: ``"float32"``, ``"bfloat16"`` or ``"float16"``, the classifier's weights and inputs (scores are
    computed in float32 from the logits).
    """
    if dtype not in PREDICT_DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(PREDICT_DTYPES)}, got {dtype!r}")
    for name, value, low in (("--top_k", top_k, 1), ("--batch_size", batch_size, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    try:
        num_workers = resolve_num_workers(num_workers, len(sources), batch_size)
    except ValueError as err:
        raise ValueError(f"--dataloader_num_workers: {err}") from None
    device = torch.device(device) if device else default_device()
    loader = DataLoader(_DecodedImages(sources), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate_decoded, pin_memory=device.type == "cuda")
    batches = iter(loader)  # the workers start decoding now, while the model loads
    classifier = AutoModelForImageClassification.from_pretrained(model, dtype=PREDICT_DTYPES[dtype]).to(device).eval()
    processor = AutoImageProcessor.from_pretrained(model, use_fast=True)
    multi_label = classifier.config.problem_type == "multi_label_classification"
    top_k = min(top_k, classifier.config.num_labels)
    id2label = classifier.config.id2label

    def launch(batch: _DecodedBatch) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Copy, preprocess and classify one batch (queued, asynchronous on an accelerator)."""
        pixel_values = preprocess_on_device(processor, _to_device(batch.images, device), device)
        with torch.no_grad():
            logits = classifier(pixel_values=pixel_values.to(PREDICT_DTYPES[dtype])).logits.float()
        scores = logits.sigmoid() if multi_label else logits.softmax(dim=-1)
        return (batch.indices, *scores.topk(top_k, dim=-1))

    def collect(indices: list[int], values: torch.Tensor, labels: torch.Tensor) -> list[dict]:
        """One read-back per batch (this waits for the batch's forward)."""
        return [{"path": sources[i], "predictions": [{"label": id2label[c], "score": v} for c, v in zip(row_c, row_v)]}
                for i, row_v, row_c in zip(indices, values.tolist(), labels.tolist())]

    results, errors, pending = [], [], None
    for batch in batches:
        errors += [{"path": sources[i], "error": error} for i, error in batch.errors]
        if not batch.indices:
            continue
        launched = launch(batch)
        if pending is not None:
            results += collect(*pending)
        pending = launched
    if pending is not None:
        results += collect(*pending)
    return results, errors


def format_predictions_table(results: Sequence[dict]) -> str:
    rows = [("path", "rank", "style", "score")]
    for result in results:
        for rank, prediction in enumerate(result["predictions"], start=1):
            rows.append(
                (result["path"] if rank == 1 else "", str(rank), prediction["label"], f"{prediction['score']:.4f}")
            )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def predict_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``artstyle-predict``."""
    args = build_predict_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        _check_model_dir(args.model)
        sources, errors = expand_inputs(args.paths)
        results, read_errors = (
            predict(sources, args.model, args.top_k, args.batch_size, args.device, args.dataloader_num_workers,
                    args.dtype)
            if sources else ([], [])
        )
    except (ValueError, OSError) as err:  # OSError: missing files, model not found locally or on the Hub
        print(f"artstyle-predict: error: {_one_line(err)}", file=sys.stderr)
        return 2
    errors += read_errors
    if args.json:
        print(json.dumps({"results": results, "errors": errors}, indent=2))
    else:
        if results:
            print(format_predictions_table(results))
        for error in errors:
            print(f"could not read {error['path']}: {error['error']}", file=sys.stderr)
    return 1 if errors else 0


# ----------------------------------------------------------------------------------------------
# artstyle-similar
# ----------------------------------------------------------------------------------------------


def build_similar_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="artstyle-similar",
        description=(
            "Find the images of a collection closest in style to a query image. The collection is "
            "embedded once and the index kept on disk; later runs embed only new or changed files."
        ),
    )
    parser.add_argument("--index", required=True, help="folder of images to search (searched recursively)")
    parser.add_argument("--query", required=True, help="query image (file or http(s) URL)")
    parser.add_argument(
        "--model", default="outputs/pretrain", help="artstyle model folder or Hub id (default: %(default)s)"
    )
    parser.add_argument("--k", type=int, default=5, help="neighbours to show (default: %(default)s)")
    parser.add_argument(
        "--index_dir", default=None, help="where the index is stored (default: <index>/.artstyle-index)"
    )
    parser.add_argument(
        "--no_update", action="store_true", help="search the stored index without rescanning the folder"
    )
    parser.add_argument("--exclude_query", action="store_true", help="leave the query itself out of the results")
    parser.add_argument("--batch_size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--contact_sheet", default=None, help="write a PNG of the query and its neighbours here")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--device", default=None, help="torch device (default: accelerator if available, else cpu)")
    parser.add_argument("--dataloader_num_workers", type=_workers, default="auto",
                        help="processes decoding the collection's images; auto: none for up to two batches of new "
                             "or changed images, else min(8, CPU cores - 1) (default: %(default)s)")
    parser.add_argument("--save_every", type=int, default=20,
                        help="save indexing progress every N batches, so a killed run resumes (default: %(default)s)")
    parser.add_argument("--verbose", action="store_true", help="log progress")
    return parser


def similar(args: argparse.Namespace) -> dict:
    """Run one search as described by parsed ``artstyle-similar`` arguments; returns the JSON result."""
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    root = Path(args.index)
    if not root.is_dir():
        raise FileNotFoundError(f"--index {root}: not a folder of images")
    index_dir = Path(args.index_dir) if args.index_dir else root / ".artstyle-index"
    _check_model_dir(args.model)
    query_image = load_image(args.query)
    embedder = StyleEmbedder(args.model, batch_size=args.batch_size, device=args.device)

    report = None
    if args.no_update:
        index = load_index(index_dir)  # a damaged index: a warning naming the file, then None
        if index is None:
            raise FileNotFoundError(f"--no_update: no usable index at {index_dir}; run once without --no_update")
        if index.model_fingerprint != embedder.fingerprint:
            raise ValueError(f"--no_update: the index at {index_dir} was built with another model")
    else:
        try:
            index, report = build_index(root, embedder, index_dir, progress=True if args.verbose else None,
                                        num_workers=args.dataloader_num_workers, save_every=args.save_every)
        except TimeoutError:
            raise
        except OSError as err:
            raise ValueError(f"cannot write the index to {index_dir} ({err}); choose another --index_dir") from err

    exclude = ()
    query_path = Path(args.query)
    if args.exclude_query and query_path.is_file():
        try:
            exclude = (query_path.resolve().relative_to(Path(index.root).resolve()).as_posix(),)
        except ValueError:
            exclude = ()
    neighbours = index.search(embedder.embed([query_image])[0], k=args.k, exclude=exclude)
    result = {
        "query": args.query,
        "index_dir": str(index_dir),
        "index_size": len(index),
        "neighbours": [
            {"rank": rank, "path": str(Path(index.root) / path), "score": score}
            for rank, (path, score) in enumerate(neighbours, start=1)
        ],
    }
    if report is not None:
        result["update"] = {
            "added": report.added,
            "updated": report.updated,
            "removed": report.removed,
            "unchanged": report.unchanged,
            "rebuilt": report.rebuilt,
            "failed": [{"path": path, "error": error} for path, error in report.failed],
        }
    if args.contact_sheet:
        cells = [
            (load_image(n["path"]), f"{n['rank']}. {Path(n['path']).name} ({n['score']:.3f})")
            for n in result["neighbours"]
        ]
        result["contact_sheet"] = str(plot_contact_sheet(query_image, cells, args.contact_sheet))
    return result


def format_neighbours_table(result: dict) -> str:
    rows = [("rank", "score", "path")]
    rows += [(str(n["rank"]), f"{n['score']:.4f}", n["path"]) for n in result["neighbours"]]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def similar_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``artstyle-similar``."""
    args = build_similar_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        result = similar(args)
    except (ValueError, OSError) as err:  # OSError: missing files, model not found locally or on the Hub
        print(f"artstyle-similar: error: {_one_line(err)}", file=sys.stderr)
        return 2
    failed = result.get("update", {}).get("failed", [])
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        update = result.get("update")
        if update is not None:
            print(
                f"index: {result['index_size']} images ({update['added']} added, {update['updated']} updated, "
                f"{update['removed']} removed, {len(failed)} unreadable)",
                file=sys.stderr,
            )
        print(format_neighbours_table(result))
        for item in failed:
            print(f"could not read {item['path']}: {item['error']}", file=sys.stderr)
        if "contact_sheet" in result:
            print(f"contact sheet: {result['contact_sheet']}", file=sys.stderr)
    return 0


__all__ = [
    "build_predict_parser",
    "build_similar_parser",
    "expand_inputs",
    "predict",
    "predict_main",
    "similar",
    "similar_main",
]
