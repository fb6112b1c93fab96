"""Device-free cost model of one pretraining step: what the floor, the MoCo v3 baseline and the full method ask of a
device, counted on any machine without doing the arithmetic.

The three steps of ``bench_pretrain_step.py`` (same builders: floor = bare timm ViT, student fwd+bwd + teacher fwd on
both views in one pass; baseline and full = ``ArtStyleForPretraining`` forward + backward; fused AdamW step each) run
under ``torch._subclasses.fake_tensor.FakeTensorMode``: shapes and dtypes propagate, no kernel computes, so a ViT-B/16
step at batch 64 is counted in seconds on a CPU. Each step runs twice and the second is counted (the first also
creates the optimizer's state), as ``bench_pretrain_step.py`` counts after its warm-up. Per setting:

  kernel_ops    ATen operations that launch a kernel (views, metadata and allocation excluded, as
                ``bench_pretrain_step.py``'s ``ops/step``);
  matmul_gflop  FLOPs of matmuls, convolutions and attention (``torch.utils.flop_counter``), forward + backward;
  other_gb      bytes read and written by every other kernel-launching operation (sum of its tensor inputs and
                outputs): the memory traffic of eager elementwise / normalisation / reduction / copy kernels, which
                eager mode does not fuse;
  model_ms      a lower bound of the device time: matmul_gflop / peak + other_gb / bandwidth + kernel_ops x the
                smallest time of one kernel (``--peak_tflops``, ``--bandwidth_tbs``, ``--kernel_us``; defaults: an
                H100/H200 SXM in bf16).

A measured step much slower than ``model_ms`` is bound by the host (Python and dispatch per operation), which fewer
operations or a compiled step remove; one close to it is bound by the device. The last line of the output is exactly
``model_floor_ratio=<b/a> model_full_ratio=<c/b>`` (the ratios of ``model_ms``, as ``bench_pretrain_step.py`` defines
its measured ones).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pretrain_step as steps  # noqa: E402
from _common import NO_KERNEL_OPS  # noqa: E402

# metadata queries of tensor subclasses (fake tensors ask them; no kernel runs)
_METADATA = frozenset({
    "device", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "is_contiguous", "sym_is_contiguous",
    "dim", "size", "stride", "numel", "storage_offset", "is_same_size", "_has_compatible_shallow_copy_type",
    "is_non_overlapping_and_dense", "is_strides_like_format"})
# operations whose cost is counted as FLOPs (flop_counter), not as bytes
_MATMUL = frozenset({
    "mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "convolution", "convolution_backward",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_efficient_attention_backward",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_cudnn_attention_backward",
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward"})


class _Counter(TorchDispatchMode):
    """Kernel-launching ATen operations and the bytes the non-matmul ones read and write."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if func.namespace != "aten" or name in NO_KERNEL_OPS or name in _METADATA:
            return out
        self.ops += 1
        if name not in _MATMUL:
            leaves = torch.utils._pytree.tree_leaves((args, kwargs, out))
            self.bytes += sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))
        return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config_preset", "--backbone", dest="config_preset", default="vit_base",
                        help="artstyle config preset (tiny, vit_small, vit_base, ...).")
    parser.add_argument("--image_size", type=int, default=None, help="Input size (default: the preset's).")
    parser.add_argument("--batch_size", type=int, default=64, help="Images per view.")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"],
                        help="Autocast dtype of the counted step (bf16/fp16: the casts are counted too).")
    parser.add_argument("--config_overrides", default=None, help="JSON dict of ArtStyleConfig overrides.")
    parser.add_argument("--peak_tflops", type=float, default=989.0, help="Device matmul peak at --precision.")
    parser.add_argument("--bandwidth_tbs", type=float, default=4.8, help="Device memory bandwidth, TB/s.")
    parser.add_argument("--kernel_us", type=float, default=5.0, help="Smallest device time of one kernel, µs.")
    parser.add_argument("--json", default=None, help="Also write the results to this JSON file.")
    args = parser.parse_args(argv)
    for name in ("peak_tflops", "bandwidth_tbs"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0, got {getattr(args, name)}")
    if args.kernel_us < 0 or args.batch_size < 2:
        parser.error("--kernel_us must be >= 0 and --batch_size >= 2 (BatchNorm in the heads)")
    return args


def count_step(step) -> dict:
    """Run ``step`` twice under FakeTensorMode and count the second (the first also creates the optimizer's state):
    its operations, matmul GFLOP and other bytes (GB)."""
    counter, flops = _Counter(), FlopCounterMode(display=False)
    with FakeTensorMode(allow_non_fake_inputs=True):
        step()
        with flops, counter:
            step()
    return {"kernel_ops": counter.ops, "matmul_gflop": flops.get_total_flops() / 1e9, "other_gb": counter.bytes / 1e9}


def model_ms(counts: dict, args: argparse.Namespace) -> float:
    """The lower bound of the device time (ms) of a step with these counts."""
    return 1e3 * (counts["matmul_gflop"] / (args.peak_tflops * 1e3) + counts["other_gb"] / (args.bandwidth_tbs * 1e3)
                  + counts["kernel_ops"] * args.kernel_us * 1e-6)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # the step builders of bench_pretrain_step.py, on CPU tensors (no device is used)
    bench_args = steps.parse_args(["--config_preset", args.config_preset, "--batch_size", str(args.batch_size),
                                   "--precision", args.precision, "--device", "cpu"]
                                  + (["--image_size", str(args.image_size)] if args.image_size else [])
                                  + (["--config_overrides", args.config_overrides] if args.config_overrides else []))
    config = steps.build_config(bench_args)
    views = tuple(torch.randn(args.batch_size, 3, config.image_size, config.image_size) for _ in range(2))
    settings = [steps.floor_setting(config, views, bench_args),
                steps.model_setting("baseline", config.moco_v3_baseline(), views, bench_args),
                steps.model_setting("full", config, views, bench_args)]
    print(f"# artstyle step cost model | preset={args.config_preset} backbone={config.backbone} "
          f"image_size={config.image_size} batch={args.batch_size} precision={args.precision} | device model: "
          f"{args.peak_tflops:g} TFLOP/s, {args.bandwidth_tbs:g} TB/s, {args.kernel_us:g} µs per kernel", flush=True)
    print(f"{'setting':<10}{'kernel_ops':>12}{'matmul_gflop':>14}{'other_gb':>10}{'model_ms':>10}")
    results = {}
    for setting in settings:
        counts = count_step(setting.step)
        counts["model_ms"] = model_ms(counts, args)
        results[setting.name] = counts
        print(f"{setting.name:<10}{counts['kernel_ops']:>12}{counts['matmul_gflop']:>14.1f}{counts['other_gb']:>10.2f}"
              f"{counts['model_ms']:>10.2f}", flush=True)
    ratios = {"model_floor_ratio": results["baseline"]["model_ms"] / results["floor"]["model_ms"],
              "model_full_ratio": results["full"]["model_ms"] / results["baseline"]["model_ms"]}
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, **ratios}, indent=2))
    print(f"model_floor_ratio={ratios['model_floor_ratio']:.3f} model_full_ratio={ratios['model_full_ratio']:.3f}",
          flush=True)
    return {"results": results, **ratios}


if __name__ == "__main__":
    main(sys.argv[1:])
