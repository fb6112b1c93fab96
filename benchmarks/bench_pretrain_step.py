"""Cost of one artstyle pretraining step against its lower bound and against the MoCo v3 baseline.

The performance contract is in docs/method.md.

Three settings are timed in ONE process, on the same input, with the measurements interleaved (a, b, c, a, b, c, ...)
so that machine noise (other processes, thermal, turbo) hits them alike:

  (a) floor    — the bare timm ViT (``artstyle.modeling_artstyle.build_backbone(config)``): student forward+backward on
                 the two views concatenated (one pass), a frozen copy (the teacher) forward on both under ``no_grad``,
                 AdamW step (fused).
                 A trivial symmetric dot-product loss joins the two student outputs; no heads, no EMA, no queue.
  (b) baseline — ``ArtStyleForPretraining(config.moco_v3_baseline())``: forward(x1, x2, momentum=0.99) (teacher EMA
                 inside) + backward + AdamW step.
  (c) full     — ``ArtStyleForPretraining(config)`` with the default weights, same step.

``--breakdown`` adds the baseline with ONE component switched on at a time (layer-wise contrast, distillation, soft
contrast, Gram), so that a missed target can be pinned on a component.

``--compile`` adds the same three settings with ``torch.compile`` (``nn.Module.compile``: the student and teacher
backbones of the floor, the whole ``ArtStyleForPretraining`` forward, EMA and queue included; backward through the
compiled graph; the optimizer step stays eager), interleaved with the eager ones, and reports the ratios of both
modes and ``compile_speedup`` = eager full step / compiled full step. ``--compile_mode`` picks torch.compile's mode
(``reduce-overhead`` = CUDA graphs). The per-layer heads need no change for compiling: ``artstyle.heads.PerLayerMLP``
already runs all layers' MLPs as two batched ``baddbmm`` calls.

Every eager setting also reports ``kernel_ops``: the ATen operations one step dispatches to the device, views and
metadata excluded (`count_kernel_ops`). A small model's step is bound by launching these (issue 11), and the count is
the same on CPU and GPU, so it is measurable here.

``--peak_tflops P`` counts the floor's FLOPs (``torch.utils.flop_counter``, forward + backward) and reports
``floor_peak_fraction`` = floor FLOPs / floor median time / P (e.g. 989 for an H100/H200's dense bf16 peak).

Time: median over ``--steps`` measured steps after ``--warmup`` steps (per setting). Peak memory: on CUDA,
``torch.cuda.max_memory_allocated`` during one step (reset before it) minus the memory held by the OTHER settings'
models; on CPU, the peak of the summed bytes of the tensors autograd saves for backward (unique storages, parameters
excluded; collected with ``torch.autograd.graph.saved_tensors_hooks``) plus the bytes of parameters, buffers,
gradients and optimizer state. The CPU figure is a model of the memory the step needs, not an allocator reading.
It is printed on CUDA too, for comparison.

Compiled settings skip the memory and backbone-pass measurements (hooks would force recompilation).

The last line of the output is exactly ``floor_ratio=<b/a> full_ratio=<c/b> memory_ratio=<mem c/mem b>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from artstyle import ArtStyleConfig, ArtStyleForPretraining
from artstyle.configuration_artstyle import COMPONENTS
from artstyle.modeling_artstyle import build_backbone

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

TARGETS = {"floor_ratio": 1.10, "full_ratio": 1.25, "memory_ratio": 1.30}
MOMENTUM = 0.99


# ---------------------------------------------------------------------------------------------- arguments
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(parser, batch_help="Images per view.")
    parser.add_argument("--breakdown", action="store_true",
                        help="Also time the baseline with each component switched on alone.")
    parser.add_argument("--flops", action="store_true",
                        help="Also count the FLOPs of one step per setting (torch.utils.flop_counter: matmuls, "
                             "convolutions, attention; forward + backward): a noise-free cost measure.")
    parser.add_argument("--compile", action="store_true",
                        help="Also time the three settings compiled with torch.compile (eager vs compiled).")
    parser.add_argument("--compile_mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                        help="torch.compile mode for --compile.")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="Device peak TFLOP/s at --precision: report the floor's fraction of it.")
    args = parser.parse_args(argv)
    check_common_arguments(parser, args, min_batch=2)  # 2: BatchNorm in the heads
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error(f"--peak_tflops must be > 0, got {args.peak_tflops}")
    return args


def build_config(args: argparse.Namespace) -> ArtStyleConfig:
    return ArtStyleConfig.from_preset(args.config_preset, **config_overrides(args))


def component_configs(config: ArtStyleConfig) -> dict[str, ArtStyleConfig]:
    """The baseline with exactly one component of the full method switched on (for ``--breakdown``)."""
    baseline = config.moco_v3_baseline()
    variants = {f"+{name}": baseline.with_components(reference=config, **{name: True}) for name in COMPONENTS}
    return variants


# ---------------------------------------------------------------------------------------------- settings
@dataclass
class Setting:
    """One thing to time: its modules, optimizer and a ``step()`` closure."""

    name: str
    modules: list[torch.nn.Module]
    optimizer: torch.optim.Optimizer
    step: callable
    times: list[float] = field(default_factory=list)
    peak_bytes: int | None = None  # CUDA allocator peak attributable to this setting
    model_bytes: int | None = None  # saved activations + params + buffers + grads + optimizer state
    activation_bytes: int | None = None
    state_bytes: int | None = None
    backbone_passes: dict[str, int] | None = None
    kernel_ops: int | None = None  # operations dispatched to the device per step (what launches kernels), see below
    flops: int | None = None
    module_names: tuple[str, ...] = ()
    compiled: bool = False

    def persistent_bytes(self) -> int:
        """Parameters, buffers, existing gradients and optimizer state of this setting."""
        seen: set[int] = set()
        total = 0

        def add(tensor: torch.Tensor | None) -> None:
            nonlocal total
            if tensor is None or not torch.is_tensor(tensor):
                return
            storage = tensor.untyped_storage()
            if storage.data_ptr() in seen:
                return
            seen.add(storage.data_ptr())
            total += storage.nbytes()

        for module in self.modules:
            for p in module.parameters():
                add(p)
                add(p.grad)
            for b in module.buffers():
                add(b)
        for state in self.optimizer.state.values():
            for value in state.values():
                add(value)
        return total

    def grad_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for m in self.modules for p in m.parameters() if p.requires_grad)


def make_optimizer(modules: list[torch.nn.Module]) -> torch.optim.Optimizer:
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=True)  # as run_pretrain.py's


def make_scaler(device: str, precision: str):
    return torch.amp.GradScaler(device) if precision == "fp16" else None


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def floor_setting(config: ArtStyleConfig, views, args, compiled: bool = False) -> Setting:
    """(a) bare timm ViT: student forward+backward and teacher forward (no_grad), each on both views at once, AdamW."""
    student = build_backbone(config).to(args.device).train()
    teacher = build_backbone(config).to(args.device).eval()
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    if compiled:
        student.compile(mode=args.compile_mode)
        teacher.compile(mode=args.compile_mode)
    optimizer = make_optimizer([student])
    scaler = make_scaler(args.device, args.precision)
    x1, x2 = views

    def step() -> None:
        with autocast_context(args.device, args.precision):
            # both views in one pass per network, as ArtStyleForPretraining does (the floor is the cheapest way)
            s1, s2 = student(torch.cat([x1, x2])).chunk(2)
            with torch.no_grad():
                t1, t2 = teacher(torch.cat([x1, x2])).chunk(2)
            # the cheapest symmetric loss that makes every student output reach the backward
            loss = -((s1.float() * t2.float()).sum(-1).mean() + (s2.float() * t1.float()).sum(-1).mean()) / 2
        backward_and_step(loss, optimizer, scaler)

    return Setting("floor_compiled" if compiled else "floor", [student, teacher], optimizer, step,
                   module_names=("student", "teacher"), compiled=compiled)


def model_setting(name: str, config: ArtStyleConfig, views, args, compiled: bool = False) -> Setting:
    """(b)/(c): ArtStyleForPretraining forward (with teacher EMA) + backward + AdamW."""
    model = ArtStyleForPretraining(config).to(args.device).train()
    if compiled:
        model.compile(mode=args.compile_mode)
    optimizer = make_optimizer([model])
    scaler = make_scaler(args.device, args.precision)
    x1, x2 = views

    def step() -> None:
        with autocast_context(args.device, args.precision):
            loss = model(pixel_values=x1, pixel_values_2=x2, momentum=MOMENTUM).loss
        backward_and_step(loss, optimizer, scaler)

    return Setting(f"{name}_compiled" if compiled else name, [model], optimizer, step, compiled=compiled)


# ---------------------------------------------------------------------------------------------- measuring
def timed(setting: Setting, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    setting.step()
    synchronize(device)
    return time.perf_counter() - start


class SavedTensorBytes:
    """Peak of the summed sizes of the tensors autograd keeps for backward (unique storages, parameters excluded)."""

    def __init__(self, exclude: set[int]):
        self.exclude = exclude
        self.live: dict[int, int] = {}
        self.peak = 0

    def pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in self.exclude and pointer not in self.live:
            self.live[pointer] = storage.nbytes()
            self.peak = max(self.peak, sum(self.live.values()))
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def measure_memory(setting: Setting, settings: list[Setting], device: str) -> None:
    """Saved-activation model (every device) and, on CUDA, the allocator peak of one step of ``setting``."""
    parameter_storages = {p.untyped_storage().data_ptr() for m in setting.modules for p in m.parameters()}
    parameter_storages |= {b.untyped_storage().data_ptr() for m in setting.modules for b in m.buffers()}
    counter = SavedTensorBytes(parameter_storages)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        setting.step()
    setting.activation_bytes = counter.peak
    setting.state_bytes = setting.persistent_bytes() + setting.grad_bytes()  # grads are None between steps
    setting.model_bytes = setting.activation_bytes + setting.state_bytes
    if device == "cuda":
        synchronize(device)
        others = sum(s.persistent_bytes() for s in settings if s is not setting)
        torch.cuda.reset_peak_memory_stats()
        setting.step()
        synchronize(device)
        setting.peak_bytes = torch.cuda.max_memory_allocated() - others


def count_flops(setting: Setting) -> int:
    """FLOPs of one step (forward + backward) as counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        setting.step()
    return counter.get_total_flops()


def count_backbone_passes(setting: Setting) -> dict[str, int]:
    """Run one step with forward hooks on every timm patch embedding: backbone passes per step, by module path."""
    counts: dict[str, int] = {}
    handles = []
    for index, module in enumerate(setting.modules):
        prefix = setting.module_names[index] if setting.module_names else ""
        for path, sub in module.named_modules():
            if path.split(".")[-1] == "patch_embed":
                key = ".".join(part for part in (prefix, path.removesuffix(".backbone.patch_embed")
                                                 .removesuffix("patch_embed").rstrip(".")) if part) or "backbone"
                counts[key] = 0

                def hook(_module, _inputs, _output, key=key):
                    counts[key] += 1

                handles.append(sub.register_forward_hook(hook))
    try:
        setting.step()
    finally:
        for handle in handles:
            handle.remove()
    return counts


def count_kernel_ops(setting: Setting) -> int:
    """ATen operations one step dispatches to the device, views and metadata excluded (`_common.count_ops`): forward,
    backward and optimizer. A small model's step is bound by launching these, not by arithmetic (issue 11), so this
    count, which is the same on CPU and GPU for eager code, is what a change must lower to speed such a step up."""
    return count_ops(setting.step)


# ---------------------------------------------------------------------------------------------- report
def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of ``numerator[i] / denominator[i]`` (the two were measured back to back)."""
    return statistics.median(n / d for n, d in zip(numerator, denominator))


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f}"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup(args)
    config = build_config(args)
    device = torch.device(args.device)
    shape = (args.batch_size, 3, config.image_size, config.image_size)
    views = (torch.randn(shape, device=device), torch.randn(shape, device=device))

    settings = [floor_setting(config, views, args),
                model_setting("baseline", config.moco_v3_baseline(), views, args),
                model_setting("full", config, views, args)]
    if args.breakdown:
        settings += [model_setting(name, variant, views, args) for name, variant in component_configs(config).items()]
    if args.compile:
        settings += [floor_setting(config, views, args, compiled=True),
                     model_setting("baseline", config.moco_v3_baseline(), views, args, compiled=True),
                     model_setting("full", config, views, args, compiled=True)]

    print(f"# artstyle pretraining step benchmark | preset={args.config_preset} backbone={config.backbone} "
          f"depth={config.num_blocks} width={config.hidden_size} image_size={config.image_size} "
          f"patch={config.patch_size} batch={args.batch_size} device={args.device} precision={args.precision} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}", flush=True)
    print(f"# full config: weights contrastive={config.weight_contrastive} layerwise={config.weight_layerwise} "
          f"distill={config.weight_distill} gram={config.weight_gram} soft_alpha={config.soft_alpha} "
          f"pooler={config.pooler} queue_size={config.queue_size} "
          f"projection_hidden_dim={config.projection_hidden_dim}", flush=True)
    if args.device == "cuda":
        print(f"# device: {torch.cuda.get_device_name()}", flush=True)

    compile_seconds = {}
    for setting in settings:  # warm-up (also allocates the optimizer state before memory is read)
        start = time.perf_counter()
        for index in range(max(args.warmup, 1) + (2 if setting.compiled else 0)):  # compiled: + recompilations
            setting.step()
            if index == 0 and setting.compiled:
                synchronize(args.device)
                compile_seconds[setting.name] = time.perf_counter() - start
                print(f"# {setting.name}: first step (compilation) {compile_seconds[setting.name]:.1f} s", flush=True)
    for setting in settings:
        if setting.compiled:
            continue
        setting.backbone_passes = count_backbone_passes(setting)
        setting.kernel_ops = count_kernel_ops(setting)
        if args.flops or (args.peak_tflops and setting.name == "floor"):
            setting.flops = count_flops(setting)
        measure_memory(setting, settings, args.device)
    for index in range(args.steps):  # interleaved: a, b, c, a, b, c, ...
        for setting in settings:
            setting.times.append(timed(setting, args.device))
        if (index + 1) % 5 == 0 or index + 1 == args.steps:
            print(f"# measured {index + 1}/{args.steps} rounds", flush=True)

    by_name = {s.name: s for s in settings}
    baseline_time = statistics.median(by_name["baseline"].times)
    memory_key = "peak_bytes" if args.device == "cuda" else "model_bytes"
    print(f"{'setting':<12} {'median_s':>9} {'min_s':>8} {'max_s':>8} {'vs_floor':>9} {'vs_base':>8} "
          f"{'mem_MiB':>9} {'act_MiB':>8} {'state_MiB':>9} {'ops/step':>8}  backbone passes/step")
    results = {}
    floor_time = statistics.median(by_name["floor"].times)
    for s in settings:
        median = statistics.median(s.times)
        memory = getattr(s, memory_key)
        print(f"{s.name:<12} {median:9.4f} {min(s.times):8.4f} {max(s.times):8.4f} {median / floor_time:9.3f} "
              f"{median / baseline_time:8.3f} {mib(memory):>9} {mib(s.activation_bytes):>8} {mib(s.state_bytes):>9} "
              f"{s.kernel_ops if s.kernel_ops is not None else '-':>8}  {s.backbone_passes}")
        results[s.name] = {"median_s": median, "times_s": s.times, "memory_bytes": memory,
                           "saved_activation_bytes": s.activation_bytes, "state_bytes": s.state_bytes,
                           "cuda_peak_bytes": s.peak_bytes, "model_bytes": s.model_bytes,
                           "backbone_passes": s.backbone_passes, "kernel_ops": s.kernel_ops}
    if args.flops:
        base_flops = by_name["baseline"].flops
        print("# FLOPs per step (torch.utils.flop_counter; matmul/conv/attention only, forward + backward):")
        for s in (s for s in settings if s.flops is not None):
            print(f"#   {s.name:<12} {s.flops / 1e9:10.2f} GFLOP  vs baseline {s.flops / base_flops:6.3f}  "
                  f"vs floor {s.flops / by_name['floor'].flops:6.3f}")
            results[s.name]["flops"] = s.flops
    if args.device == "cuda":
        print("# memory: torch.cuda.max_memory_allocated over one step (reset before), minus the parameters, buffers "
              "and optimizer state of the other settings held on the GPU at the same time")
    else:
        print("# memory (CPU): peak sum of tensors saved for backward (torch.autograd.graph.saved_tensors_hooks, "
              "unique storages, parameters excluded) + parameters + buffers + gradients + AdamW state")
    print("# noise: shared machine; compare only ratios from the same run (measurements are interleaved)")

    ratios = {"floor_ratio": baseline_time / floor_time,
              "full_ratio": statistics.median(by_name["full"].times) / baseline_time,
              "memory_ratio": getattr(by_name["full"], memory_key) / getattr(by_name["baseline"], memory_key)}
    paired = {"floor_ratio": paired_ratio(by_name["baseline"].times, by_name["floor"].times),
              "full_ratio": paired_ratio(by_name["full"].times, by_name["baseline"].times)}
    print(f"# paired (median over rounds of the per-round ratio, robust to slow drifts of machine load): "
          f"floor_ratio={paired['floor_ratio']:.3f} full_ratio={paired['full_ratio']:.3f}")
    spread = max(max(s.times) / min(s.times) for s in settings)
    if spread > 1.5:
        print(f"# WARNING: noisy machine (slowest/fastest step of one setting up to {spread:.1f}x): treat the "
              "ratios as indicative; rerun on an idle machine or with --threads 1")
    for key, value in ratios.items():
        verdict = "ok" if value <= TARGETS[key] else "MISSED"
        print(f"# target {key} <= {TARGETS[key]:.2f}: {value:.3f} {verdict}")
    extra = {}
    if args.compile:
        compiled = {name: statistics.median(by_name[f"{name}_compiled"].times)
                    for name in ("floor", "baseline", "full")}
        extra["compiled_ratios"] = {"floor_ratio": compiled["baseline"] / compiled["floor"],
                                    "full_ratio": compiled["full"] / compiled["baseline"]}
        extra["compile_speedup"] = statistics.median(by_name["full"].times) / compiled["full"]
        extra["compile_speedup_paired"] = paired_ratio(by_name["full"].times, by_name["full_compiled"].times)
        extra["compile_seconds"] = compile_seconds
        print(f"# compiled ({args.compile_mode}): floor_ratio={extra['compiled_ratios']['floor_ratio']:.3f} "
              f"full_ratio={extra['compiled_ratios']['full_ratio']:.3f} compile_speedup (eager full / compiled full)="
              f"{extra['compile_speedup']:.3f} (paired {extra['compile_speedup_paired']:.3f})")
    if args.peak_tflops:
        floor = by_name["floor"]
        extra["floor_tflops"] = floor.flops / floor_time / 1e12
        extra["floor_peak_fraction"] = extra["floor_tflops"] / args.peak_tflops
        results["floor"]["flops"] = floor.flops
        print(f"# floor: {floor.flops / 1e9:.1f} GFLOP/step in {floor_time * 1e3:.2f} ms = {extra['floor_tflops']:.2f} "
              f"TFLOP/s = {100 * extra['floor_peak_fraction']:.1f} % of the {args.peak_tflops:g} TFLOP/s peak")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results, "ratios": ratios, "paired_ratios": paired,
                       "targets": TARGETS, **extra}, handle, indent=2)
    print(f"floor_ratio={ratios['floor_ratio']:.3f} full_ratio={ratios['full_ratio']:.3f} "
          f"memory_ratio={ratios['memory_ratio']:.3f}", flush=True)
    return {"results": results, "ratios": ratios, **extra}


if __name__ == "__main__":
    main(sys.argv[1:])
