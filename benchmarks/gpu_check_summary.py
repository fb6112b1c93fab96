"""The ONE summary JSON of ``gpu_check.sh``: ``python benchmarks/gpu_check_summary.py LOG_DIR``.

Reads ``bench_data.json``, ``bench_pretrain_step.json`` and ``bench_inference.json`` from ``LOG_DIR`` and writes
``LOG_DIR/gpu_check.json`` with the keys of issue 11 (``device``, ``tiny_steps_per_s``, ``tiny_data_wait_fraction``,
``floor_ratio``, ``full_ratio``, ``compile_speedup``, ``floor_peak_fraction``, ``pipeline_images_per_s``,
``predict_images_per_s``) plus details. ``pipeline_images_per_s`` is the stock ``ImageClassificationPipeline``'s; the
recommended ``pipeline_class=ArtStyleImageClassificationPipeline`` is ``artstyle_pipeline_images_per_s``.
``floor_ratio``/``full_ratio`` are the compiled mode's (``ratio_mode``), the eager ones are kept as ``*_eager``.
Likewise ``tiny_steps_per_s``/``tiny_data_wait_fraction`` are the compiled tiny loop's (``gpu_check.sh`` step 6, the
mode a GPU user picks with ``run_pretrain.py --torch_compile``) when it ran, else the eager loop's; ``tiny_mode`` names
which, and the eager loop's are always kept as ``*_eager``. A part that did not run leaves its keys ``null``, listed
under ``missing``; the exit status is 1 then.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REQUIRED = ("device", "tiny_steps_per_s", "tiny_data_wait_fraction", "floor_ratio", "full_ratio", "compile_speedup",
            "floor_peak_fraction", "pipeline_images_per_s", "predict_images_per_s")


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summarise(log_dir: str | Path, device: str | None = None) -> dict:
    log_dir = Path(log_dir)
    data = _load(log_dir / "bench_data.json")
    step = _load(log_dir / "bench_pretrain_step.json")
    inference = _load(log_dir / "bench_inference.json")
    compiled_loop = _load(log_dir / "bench_data_compiled.json").get("results", {}).get("gpu", {})
    gpu_path, cpu_path = data.get("results", {}).get("gpu", {}), data.get("results", {}).get("cpu", {})
    compiled, eager = step.get("compiled_ratios", {}), step.get("ratios", {})
    if device is None:
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    # the tiny loop's reported mode, as for the ratios: compiled when that loop ran, else eager
    tiny = compiled_loop if compiled_loop.get("steps_per_s") is not None else gpu_path
    tiny_mode = f"compiled ({compiled_loop.get('compiled') or 'default'})" if tiny is compiled_loop else "eager"
    summary = {
        "device": device,
        "tiny_steps_per_s": tiny.get("steps_per_s"),
        "tiny_data_wait_fraction": tiny.get("data_wait_fraction"),
        "floor_ratio": compiled.get("floor_ratio"),
        "full_ratio": compiled.get("full_ratio"),
        "compile_speedup": step.get("compile_speedup"),
        "floor_peak_fraction": step.get("floor_peak_fraction"),
        "pipeline_images_per_s": inference.get("pipeline_images_per_s"),  # the stock ImageClassificationPipeline
        "predict_images_per_s": inference.get("predict_images_per_s"),
        "ratio_mode": "compiled",
        "tiny_mode": tiny_mode,
        "tiny_steps_per_s_eager": gpu_path.get("steps_per_s"),
        "tiny_data_wait_fraction_eager": gpu_path.get("data_wait_fraction"),
        "floor_ratio_eager": eager.get("floor_ratio"),
        "full_ratio_eager": eager.get("full_ratio"),
        "memory_ratio_eager": eager.get("memory_ratio"),
        "compile_speedup_paired": step.get("compile_speedup_paired"),
        "compile_seconds": step.get("compile_seconds"),
        "floor_tflops": step.get("floor_tflops"),
        "peak_tflops": step.get("args", {}).get("peak_tflops"),
        "step_median_s": {name: result.get("median_s") for name, result in step.get("results", {}).items()},
        "tiny_augment_call_fraction": gpu_path.get("augment_call_fraction"),
        "tiny_gpu_path_images_per_s": gpu_path.get("images_per_s"),
        "tiny_cpu_path_images_per_s": cpu_path.get("images_per_s"),
        "tiny_cpu_path_steps_per_s": cpu_path.get("steps_per_s"),
        "tiny_cpu_path_data_wait_fraction": cpu_path.get("data_wait_fraction"),
        "model_images_per_s": inference.get("model_images_per_s"),
        # pipeline_class=ArtStyleImageClassificationPipeline, and both pipelines' host-side CPU us per image
        "artstyle_pipeline_images_per_s": inference.get("artstyle_pipeline_images_per_s"),
        "pipeline_host_us_per_image": inference.get("pipeline_host_us_per_image"),
        "predict_load_s": inference.get("predict_load_s"),
        "predict_images_per_s_after_load": inference.get("predict_images_per_s_after_load"),
        "tiny_augment_device_ops_per_batch": gpu_path.get("augment_device_ops_per_batch"),
        # the optional compiled tiny loop (gpu_check.sh step 6): steps/s, data wait, the compiling first step
        "tiny_steps_per_s_compiled": compiled_loop.get("steps_per_s"),
        "tiny_data_wait_fraction_compiled": compiled_loop.get("data_wait_fraction"),
        "tiny_compile_first_step_s": compiled_loop.get("first_step_s"),
        "inference_ratio": inference.get("inference_ratio"),
        # where the tiny step's host time goes (bench_data.py --profile) and what each setting launches per step
        "tiny_profile": gpu_path.get("profile"),
        "kernel_ops_per_step": {name: result.get("kernel_ops") for name, result in step.get("results", {}).items()},
    }
    summary["missing"] = [key for key in REQUIRED if summary[key] is None]
    return summary


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python benchmarks/gpu_check_summary.py LOG_DIR", file=sys.stderr)
        return 2
    summary = summarise(argv[0])
    versions = {}
    for name in ("torch", "torchvision", "transformers", "timm"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    summary["versions"] = versions
    (Path(argv[0]) / "gpu_check.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 1 if summary["missing"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
