"""Data-path throughput of pretraining: CPU augmentation in DataLoader workers vs GPU augmentation on the device.

Source: ``--num_images`` synthetic JPEG images of ``--source_image_size`` px (smooth colour fields with noise, like the
160 px realart images), written to a temporary folder and read through a ``datasets`` split, as real data is.

Two paths, same DataLoader settings (``--num_workers``, ``EpochSeededSampler``, ``drop_last``, pinned memory on CUDA,
persistent workers):

  cpu  — ``StyleImageDataset`` + ``build_ssl_transform`` (decode + two augmented float views per image in the workers,
         ``SeededItems``), the path ``run_pretrain.py`` uses today;
  gpu  — ``DecodedImages`` (decode + shrink to uint8 in the workers; ``--cache``: read from ``build_decoded_cache``
         instead) + ``make_two_view_batch`` with ``GPUTwoViewAugment`` on ``--device``.

For each path: (1) *alone*: images/s of ``--batches`` batches delivered as the two normalised views on the device;
(2) *in a training loop*: ``ArtStyleForPretraining(config)`` forward/backward/AdamW on those batches for
``--train_steps`` steps (after ``--warmup``): steps/s and the fraction of the wall time spent waiting for data (the
host blocked in ``next(loader)``: the workers did not keep up), and separately, for the gpu path, the fraction spent
on the host in the augmentation call (the copy of the uint8 batch, parameter sampling and kernel launches; the
augmentation kernels themselves run on the device as part of the step). Each step ends with a device
synchronisation, as the loss check of ``run_pretrain.py`` does. ``--compile`` compiles the loop's model
(``--compile_mode reduce-overhead``: CUDA graphs); its first step, the compilation, is timed apart (``first_step_s``).

The last line of the output is exactly ``cpu_images_per_s=<x> gpu_images_per_s=<x> cpu_steps_per_s=<x>
gpu_steps_per_s=<x> cpu_data_wait=<f> gpu_data_wait=<f>`` (one line)
(fields of a path left out by ``--paths`` print as ``nan``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from artstyle import ArtStyleConfig, ArtStyleForPretraining
from artstyle.data import StyleImageDataset, collate_skip_bad
from artstyle.fast_data import (
    CachedDecodedImages,
    DecodedImages,
    DeviceDecodedCache,
    augment_generator,
    build_decoded_cache,
    collate_cache_indices,
    collate_decoded,
    default_decode_size,
    make_two_view_batch,
)
from artstyle.gpu_augment import GPUTwoViewAugment
from artstyle.training.data import EpochSeededSampler, SeededItems
from artstyle.transforms import build_ssl_transform

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_common_arguments,
    autocast_context,
    check_common_arguments,
    config_overrides,
    count_ops,
    setup,
    synchronize,
)

PATHS = ("cpu", "gpu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(parser, batch_help="Images per batch (per view).")
    parser.add_argument("--paths", default="cpu,gpu", help="Comma-separated subset of cpu,gpu.")
    parser.add_argument("--augmentation", default="moco_v3", choices=["moco_v3", "style_preserving"])
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader worker processes.")
    parser.add_argument("--num_images", type=int, default=512, help="Synthetic source images.")
    parser.add_argument("--source_image_size", type=int, default=160, help="Side of the synthetic JPEG images.")
    parser.add_argument("--decode_size", type=int, default=None, help="gpu path: decoded side (default 2x image).")
    parser.add_argument("--cache", action="store_true", help="gpu path: serve a decoded uint8 cache (no decoding).")
    parser.add_argument("--cache_on", default="auto", choices=["auto", "host", "device"],
                        help="--cache: where the cache is read (run_pretrain.py --decoded_cache_device): host (memory-"
                             "mapped, batches assembled by the workers), device (copied to --device once, batches "
                             "gathered there by index, no workers) or auto (device on CUDA).")
    parser.add_argument("--batches", type=int, default=20, help="Measured batches of the data path alone.")
    parser.add_argument("--train_steps", type=int, default=20, help="Measured training steps per path.")
    parser.add_argument("--profile", default=None,
                        help="Write a torch.profiler table of --profile_steps training steps of the gpu path (else the "
                             "last path) here "
                             "(text): host time by operation, the data/forward/backward/optimizer split, kernel "
                             "launches and synchronisations per step.")
    parser.add_argument("--profile_steps", type=int, default=5, help="Steps profiled with --profile.")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the training loop's model (nn.Module.compile: EMA and queue inside the "
                             "compiled forward) and, on the gpu path, the augmentation's device part (default mode, "
                             "as run_pretrain.py --torch_compile); the warm-up steps include the compilation, timed "
                             "apart.")
    parser.add_argument("--compile_mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                        help="torch.compile mode for --compile (reduce-overhead: CUDA graphs).")
    parser.add_argument("--compile_backend", default="inductor",
                        help="torch.compile backend for --compile (eager: capture only, for tests).")
    args = parser.parse_args(argv)
    check_common_arguments(parser, args, min_batch=2)
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not args.paths or any(p not in PATHS for p in args.paths):
        parser.error(f"--paths must be a comma-separated subset of cpu,gpu, got {args.paths}")
    for name in ("num_workers", "batches", "train_steps"):
        if getattr(args, name) < (0 if name == "num_workers" else 1):
            parser.error(f"--{name} must be >= {0 if name == 'num_workers' else 1}, got {getattr(args, name)}")
    if args.num_images < args.batch_size:
        parser.error(f"--num_images ({args.num_images}) must be >= --batch_size ({args.batch_size})")
    return args


def write_images(folder: Path, count: int, size: int, seed: int) -> list[str]:
    """``count`` JPEG files: smooth random colour fields plus noise (decoding cost like real paintings)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    paths = []
    for index in range(count):
        a = rng.uniform(-4, 4, (3, 3))
        field = np.stack([np.sin(a[c, 0] * xx * 3 + a[c, 1] * yy * 3 + a[c, 2]) for c in range(3)], -1)
        array = np.clip(128 + 90 * field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        path = folder / f"{index:05d}.jpg"
        Image.fromarray(array).save(path, quality=90)
        paths.append(str(path))
    return paths


def build_split(paths: list[str]):
    import datasets

    return datasets.Dataset.from_dict({"image": paths}).cast_column("image", datasets.Image())


def make_loader(dataset, collate_fn, args, num_workers: int | None = None) -> torch.utils.data.DataLoader:
    workers = args.num_workers if num_workers is None else num_workers
    return torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, sampler=EpochSeededSampler(len(dataset), seed=args.seed),
        drop_last=True, num_workers=workers, collate_fn=collate_fn, pin_memory=args.device == "cuda",
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(args.seed))


def cache_on(args) -> str:
    """``--cache_on`` resolved: ``host`` or ``device`` (auto: device on CUDA, as run_pretrain.py's default)."""
    if args.cache_on != "auto":
        return args.cache_on
    return "device" if torch.device(args.device).type == "cuda" else "host"


class Batches:
    """Endless two-view batches on the device from one path; ``wait`` sums the host time blocked on the loader,
    ``augment_time`` the host time of the copy to the device + GPU augmentation call."""

    def __init__(self, path: str, split, config: ArtStyleConfig, args, cache_dir: Path):
        self.path, self.args, self.device = path, args, torch.device(args.device)
        self.epoch, self.index, self.wait, self.augment_time = 0, 0, 0.0, 0.0
        self.first_step_s = None  # the training loop's first step (with --compile: the compilation)
        self.cache = None  # DeviceDecodedCache with --cache --cache_on device
        if path == "cpu":
            transform = build_ssl_transform(args.augmentation, config.image_size, config.image_mean, config.image_std)
            dataset = SeededItems(StyleImageDataset(split, transform, label_column=None), seed=args.seed)
            self.loader, self.augment = make_loader(dataset, collate_skip_bad, args), None
        else:
            decoded = DecodedImages(split, args.decode_size or default_decode_size(config.image_size))
            if not args.cache:
                self.loader = make_loader(decoded, collate_decoded, args)
            elif cache_on(args) == "device":
                self.cache = DeviceDecodedCache(build_decoded_cache(decoded, cache_dir, args.num_workers), self.device)
                self.loader = make_loader(self.cache.dataset(), collate_cache_indices, args, num_workers=0)
            else:
                cached = CachedDecodedImages(build_decoded_cache(decoded, cache_dir, args.num_workers))
                self.loader = make_loader(cached, collate_decoded, args)
            self.augment = GPUTwoViewAugment(args.augmentation, config.image_size, config.image_mean,
                                             config.image_std)
            if args.compile:
                self.augment.compile(backend=args.compile_backend)
        self.iterator = iter(self.loader)

    def close(self) -> None:
        """Stop the loader's workers now: persistent workers still prefetching would read the temporary images after
        their folder is gone (857 "Skipping undecodable image" warnings in a GPU run's log)."""
        shutdown = getattr(self.iterator, "_shutdown_workers", None)  # DataLoader's own clean-up (no public API)
        if shutdown is not None:
            shutdown()
        self.iterator = None

    def next(self) -> dict:
        start = time.perf_counter()
        while True:
            try:
                batch = next(self.iterator)
                break
            except StopIteration:
                self.epoch += 1
                self.index = 0
                self.loader.sampler.set_epoch(self.epoch)
                self.iterator = iter(self.loader)
        self.index += 1
        loaded = time.perf_counter()
        self.wait += loaded - start
        if self.augment is None:
            batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()
                     if key in ("pixel_values", "pixel_values_2")}
        else:
            batch = make_two_view_batch(batch, self.augment, augment_generator(self.args.seed, self.epoch, self.index),
                                        self.device, self.cache)
        self.augment_time += time.perf_counter() - loaded
        return batch


def data_alone(batches: Batches, args) -> float:
    """Images/s of the data path alone (views on the device, synchronised at the end)."""
    for _ in range(max(args.warmup, 1)):
        batches.next()
    synchronize(args.device)
    start = time.perf_counter()
    for _ in range(args.batches):
        batch = batches.next()
    synchronize(args.device)
    if batch["pixel_values"].shape[0] != args.batch_size:
        raise RuntimeError(f"got a batch of {batch['pixel_values'].shape[0]} images, expected {args.batch_size}")
    return args.batches * args.batch_size / (time.perf_counter() - start)


def training_loop(batches: Batches, config: ArtStyleConfig, args,
                  profile_path: str | None = None) -> tuple[float, float, float, dict | None]:
    """(steps/s, data-wait fraction, augmentation-call fraction, the `write_profile` summary or None) of a
    pretraining loop fed by ``batches``."""
    model = ArtStyleForPretraining(config).to(args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    if args.compile:
        model.compile(backend=args.compile_backend, mode=None if args.compile_mode == "default" else args.compile_mode)

    record = torch.profiler.record_function  # labels for --profile (no cost without a profiler)

    def step() -> None:
        with record("step/data+augment"):
            batch = batches.next()
        with record("step/forward"), autocast_context(args.device, args.precision):
            loss = model(pixel_values=batch["pixel_values"], pixel_values_2=batch["pixel_values_2"],
                         momentum=0.99).loss
        with record("step/backward"):
            loss.backward()
        with record("step/optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss).item():  # the loss check of run_pretrain.py: one sync per step
            raise FloatingPointError("non-finite loss in the benchmark loop")

    start = time.perf_counter()
    step()  # the first step compiles, with --compile
    synchronize(args.device)
    batches.first_step_s = time.perf_counter() - start
    for _ in range(max(args.warmup, 1) - 1):
        step()
    synchronize(args.device)
    batches.wait = batches.augment_time = 0.0
    start = time.perf_counter()
    for _ in range(args.train_steps):
        step()
    synchronize(args.device)
    elapsed = time.perf_counter() - start
    timed = args.train_steps / elapsed, batches.wait / elapsed, batches.augment_time / elapsed  # before profiling
    return *timed, write_profile(step, args, profile_path) if profile_path else None


def augment_op_counts(augment: GPUTwoViewAugment, args, decode_size: int) -> dict:
    """ATen operations of one two-view augmentation call on a ``--batch_size`` batch (`_common.count_ops`): all of
    them, and those of the parameter draws (CPU tensors on every device). The difference runs on the device: the
    launches the call costs there."""
    pixels = torch.randint(0, 256, (args.batch_size, 3, decode_size, decode_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(args.seed)).to(args.device)
    sizes = torch.tensor([[decode_size, decode_size]] * args.batch_size)
    augment(pixels, torch.Generator().manual_seed(args.seed))  # device constants are made on the first call

    def draws() -> None:
        generator = torch.Generator().manual_seed(args.seed)
        for view in augment.views:
            augment.pack_params(augment.sample_params(sizes, view, generator))

    total = count_ops(augment, pixels, torch.Generator().manual_seed(args.seed))
    host = count_ops(draws)
    return {"augment_ops_per_batch": total, "augment_param_ops_per_batch": host,
            "augment_device_ops_per_batch": total - host}


LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
PHASES = ("step/data+augment", "step/forward", "step/backward", "step/optimizer")


def phase_host_ms(events, steps: int) -> dict[str, float]:
    """Host milliseconds per step of each ``record_function`` phase in ``key_averages()`` ``events``.

    On CUDA a range appears twice (its CPU event and a GPU user annotation with no CPU time, same key): the times are
    summed over every event of the key (keeping one by key dropped the CPU one: all 0.0 in the first GPU profile).
    """
    return {name: sum(e.cpu_time_total for e in events if e.key == name) / 1e3 / steps
            for name in PHASES if any(e.key == name for e in events)}


def write_profile(step, args, path: str) -> dict:
    """Profile ``--profile_steps`` steps; write the per-step summary and the top operations by host time to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if str(args.device).startswith("cuda") else [])
    with profile(activities=activities) as prof:
        for _ in range(args.profile_steps):
            step()
        synchronize(args.device)
    events = prof.key_averages()
    steps = args.profile_steps
    by_key = {event.key: event for event in events}
    summary = {
        "steps": steps,
        "phase_host_ms_per_step": phase_host_ms(events, steps),
        "kernel_launches_per_step": sum(by_key[k].count for k in LAUNCHES if k in by_key) / steps,
        "synchronisations_per_step": sum(e.count for e in events if "Synchronize" in e.key) / steps,
        "aten_ops_per_step": sum(e.count for e in events if e.key.startswith("aten::")) / steps,
    }
    lines = [f"# bench_data.py --profile: {steps} training steps, device {args.device}, batch {args.batch_size}, "
             f"precision {args.precision}", "# per step: " + json.dumps(summary), "",
             events.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=70)]
    Path(path).write_text("\n".join(lines) + "\n")
    print(f"# profile: {json.dumps(summary)} -> {path}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup(args)
    config = ArtStyleConfig.from_preset(args.config_preset, **config_overrides(args))
    print(f"# artstyle data-path benchmark | preset={args.config_preset} image_size={config.image_size} "
          f"batch={args.batch_size} device={args.device} precision={args.precision} workers={args.num_workers} "
          f"augmentation={args.augmentation} source={args.num_images} x {args.source_image_size} px JPEG "
          f"cache={cache_on(args) if args.cache else False} compile={args.compile} torch={torch.__version__} "
          f"threads={torch.get_num_threads()}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        split = build_split(write_images(Path(folder), args.num_images, args.source_image_size, args.seed))
        profiled = "gpu" if "gpu" in args.paths else args.paths[-1]  # --profile: the GPU path when run
        for path in args.paths:
            alone = Batches(path, split, config, args, Path(folder) / "cache")
            images_per_s = data_alone(alone, args)
            alone.close()
            batches = Batches(path, split, config, args, Path(folder) / "cache")
            steps_per_s, wait, augment, profile = training_loop(batches, config, args,
                                                                args.profile if path == profiled else None)
            batches.close()
            results[path] = {"images_per_s": images_per_s, "steps_per_s": steps_per_s, "data_wait_fraction": wait,
                             "augment_call_fraction": augment, "first_step_s": batches.first_step_s,
                             "compiled": args.compile_mode if args.compile else None,
                             "augment_compiled": bool(args.compile and path == "gpu"),
                             "cache_on": cache_on(args) if args.cache and path == "gpu" else None}
            if profile is not None:
                results[path]["profile"] = profile
            if path == "gpu":
                results[path].update(augment_op_counts(batches.augment, args,
                                                       args.decode_size or default_decode_size(config.image_size)))
                print(f"gpu  augmentation call: {results[path]['augment_ops_per_batch']} ATen operations per batch, "
                      f"{results[path]['augment_device_ops_per_batch']} of them on the device", flush=True)
            mode = f" (compiled, {args.compile_mode}; first step {batches.first_step_s:.1f} s)" if args.compile else ""
            print(f"{path:<4} data alone {images_per_s:9.1f} images/s | training loop{mode} {steps_per_s:7.2f} steps/s "
                  f"({steps_per_s * args.batch_size:8.1f} images/s), waiting for data {100 * wait:5.1f} % of the time, "
                  f"copy{' + augmentation call' if path == 'gpu' else ''} {100 * augment:5.1f} %", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=2)

    def field(path: str, key: str, digits: int) -> str:
        return f"{results[path][key]:.{digits}f}" if path in results else "nan"

    print(f"cpu_images_per_s={field('cpu', 'images_per_s', 1)} "
          f"gpu_images_per_s={field('gpu', 'images_per_s', 1)} "
          f"cpu_steps_per_s={field('cpu', 'steps_per_s', 3)} "
          f"gpu_steps_per_s={field('gpu', 'steps_per_s', 3)} "
          f"cpu_data_wait={field('cpu', 'data_wait_fraction', 3)} "
          f"gpu_data_wait={field('gpu', 'data_wait_fraction', 3)}",
          flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
