"""The pretraining loop reads device values once per micro-batch (a GPU synchronisation each: on the H200 the tiny
step was bound by host-side work, and every read makes the host wait for the device queue)."""

from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, Dataset

from artstyle import ArtStyleForPretraining
from artstyle.training.checkpoint import TrainingState
from artstyle.training.data import SeededItems
from artstyle.training.pretrain_loop import LOSS_TERMS, PretrainLoop

from conftest import tiny_config

READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__"}


class Pairs(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        return torch.randn(2, 3, 32, 32, generator=generator)


def collate(items):
    views = torch.stack(items)
    return {"pixel_values": views[:, 0], "pixel_values_2": views[:, 1], "num_skipped": 0}


class Reads(TorchFunctionMode):
    """Counts reads of tensor values into Python (each one a device synchronisation on a GPU), by the innermost
    artstyle function on the stack."""

    def __init__(self):
        super().__init__()
        self.by_file = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in READS:
            import traceback

            frame = next((f for f in reversed(traceback.extract_stack()[:-1]) if "artstyle" in f.filename), None)
            key = frame.name if frame else "?"  # the artstyle function that read
            self.by_file[key] = self.by_file.get(key, 0) + 1
        return func(*args, **(kwargs or {}))


def make_loop(tmp_path, steps, max_grad_norm=None):
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = ArtStyleForPretraining(tiny_config(backbone_depth=2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    dataset = SeededItems(Pairs(), seed=0)
    loader = DataLoader(dataset, batch_size=4, collate_fn=collate)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    args = SimpleNamespace(seed=0, per_device_train_batch_size=4, max_grad_norm=max_grad_norm, logging_steps=1,
                           eval_every=None, checkpointing_steps=None, checkpoints_total_limit=None)
    return PretrainLoop(accelerator, model, optimizer, loader, dataset, TrainingState(), args,
                        lambda step: {"lr": 1e-4, "weight_decay": 0.05, "momentum": 0.99}, steps, 10,
                        tmp_path / "checkpoints")


@pytest.mark.parametrize("max_grad_norm", [None, 1.0])
def test_one_read_of_device_values_per_step_in_the_loop(tmp_path, max_grad_norm):
    loop = make_loop(tmp_path, steps=3, max_grad_norm=max_grad_norm)
    reads = Reads()
    with reads:
        losses = loop.run()
    assert loop.state.step == 3 and set(losses) == set(LOSS_TERMS)
    assert all(torch.isfinite(torch.tensor(value)) for value in losses.values())
    # the loop: one read per step (the loss terms: the finiteness check and the logged values), none in
    # count_skipped / end_step, none in the model (the queue pointer stays on the device); before 2026-11-28: four
    # reads a step in the loop and one in soft_contrast.enqueue_keys. accelerate's data loader: one seed per epoch (a
    # CPU generator, 2 epochs here)
    assert reads.by_file.pop("train_micro_batch") == 3, reads.by_file
    assert reads.by_file.pop("run_epoch", 0) <= 2, reads.by_file
    assert reads.by_file == {}, reads.by_file  # nothing else reads device values


def test_the_logged_losses_are_the_mean_of_the_step_terms(tmp_path):
    loop = make_loop(tmp_path, steps=1)
    loop.run()
    total = sum(getattr(loop.model.config, f"weight_{name.removeprefix('loss_')}") * loop.last_losses[name]
                for name in LOSS_TERMS if name != "loss")
    assert loop.last_losses["loss"] == pytest.approx(total, rel=1e-5)
