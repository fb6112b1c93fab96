"""Pieces shared by the benchmark scripts: common options, device sync, autocast, setup."""

from __future__ import annotations

import argparse
import contextlib
import json

import torch

from artstyle.configuration_artstyle import CONFIG_PRESETS


def add_common_arguments(parser: argparse.ArgumentParser, batch_help: str) -> None:
    """Options every benchmark takes: model size, batch, device, precision, repetitions, threads, seed, JSON."""
    parser.add_argument("--config_preset", "--backbone", dest="config_preset", default="tiny",
                        choices=CONFIG_PRESETS, help="ArtStyleConfig preset (backbone + heads).")
    parser.add_argument("--image_size", type=int, default=None, help="Input size (default: the preset's).")
    parser.add_argument("--batch_size", type=int, default=32, help=batch_help)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="fp32, or torch.autocast with bf16/fp16.")
    parser.add_argument("--steps", type=int, default=20, help="Measured repetitions per setting (median taken).")
    parser.add_argument("--warmup", type=int, default=3, help="Unmeasured repetitions per setting first.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU; default: torch's).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="Also write the results to this JSON file.")
    parser.add_argument("--config_overrides", default=None,
                        help='JSON object of ArtStyleConfig overrides, e.g. \'{"backbone_depth": 2}\'.')


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, min_batch: int = 1) -> None:
    """``parser.error`` (exit 2 with the option's name) on values no benchmark can run with."""
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    if args.batch_size < min_batch:
        parser.error(f"--batch_size must be >= {min_batch}, got {args.batch_size}")
    if args.image_size is not None and args.image_size < 1:
        parser.error(f"--image_size must be >= 1, got {args.image_size}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but torch.cuda.is_available() is False")
    if args.config_overrides is not None:
        check_config_overrides(parser, args.config_overrides)


def check_config_overrides(parser: argparse.ArgumentParser, value: str) -> None:
    """``parser.error`` unless ``--config_overrides`` is a JSON object."""
    try:
        overrides = json.loads(value)
    except json.JSONDecodeError as error:
        parser.error(f"--config_overrides is not valid JSON: {error}")
    if not isinstance(overrides, dict):
        parser.error("--config_overrides must be a JSON object")


def config_overrides(args: argparse.Namespace) -> dict:
    """``--image_size`` and ``--config_overrides`` as keyword arguments of ``ArtStyleConfig.from_preset``."""
    overrides = {} if args.image_size is None else {"image_size": args.image_size}
    if args.config_overrides:
        overrides.update(json.loads(args.config_overrides))
    return overrides


def setup(args: argparse.Namespace) -> None:
    """Threads and seed, before any model is built."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)


def synchronize(device: str) -> None:
    """Wait for queued CUDA work, so that ``time.perf_counter`` brackets the real compute."""
    if device == "cuda":
        torch.cuda.synchronize()


def autocast_context(device: str, precision: str):
    """``torch.autocast`` for bf16/fp16, a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


# ATen operations that launch no kernel: views, metadata, allocation, the optimizer's host-side scalar reads
NO_KERNEL_OPS = frozenset({
    "view", "_unsafe_view", "as_strided", "transpose", "t", "expand", "unsqueeze", "squeeze", "permute", "slice",
    "select", "unbind", "split", "split_with_sizes", "alias", "detach", "reshape", "_reshape_alias", "chunk", "narrow",
    "diagonal", "unflatten", "flatten", "view_as", "lift_fresh", "resolve_conj", "resolve_neg", "empty",
    "empty_strided", "empty_like", "_local_scalar_dense", "_record_function_enter_new", "_record_function_exit"})


def count_ops(function, *args, **kwargs) -> int:
    """The ATen operations ``function(*args, **kwargs)`` dispatches, those in ``NO_KERNEL_OPS`` excluded: on a GPU,
    the kernels it launches. Eager code dispatches the same operations on CPU and GPU, so this is measurable here."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ not in NO_KERNEL_OPS:
                self.count += 1
            return func(*args, **(kwargs or {}))

    with Counter() as counter:
        function(*args, **kwargs)
    return counter.count
