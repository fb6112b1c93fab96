import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from artstyle.training import (
    EpochSeededSampler,
    SeededItems,
    TrainingState,
    latest_checkpoint,
    list_checkpoints,
    remove_incomplete_checkpoints,
    resolve_resume_checkpoint,
    rotate_checkpoints,
)


def _make(tmp_path, names):
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"x")


def test_latest_is_highest_complete_step(tmp_path):
    _make(tmp_path, ["step_2", "step_10", "step_9", ".tmp-step_12", "other"])
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 9, 10]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_10"
    assert resolve_resume_checkpoint("latest", tmp_path) == tmp_path / "step_10"
    assert resolve_resume_checkpoint(None, tmp_path) is None
    assert resolve_resume_checkpoint(str(tmp_path / "step_2"), tmp_path) == tmp_path / "step_2"
    with pytest.raises(FileNotFoundError, match="step_77"):
        resolve_resume_checkpoint(str(tmp_path / "step_77"), tmp_path)
    with pytest.raises(ValueError, match="incomplete"):
        resolve_resume_checkpoint(str(tmp_path / ".tmp-step_12"), tmp_path)
    assert resolve_resume_checkpoint("latest", tmp_path / "none") is None
    assert remove_incomplete_checkpoints(tmp_path) == [tmp_path / ".tmp-step_12"]
    assert not (tmp_path / ".tmp-step_12").exists()


def test_rotate_keeps_newest(tmp_path):
    _make(tmp_path, ["step_1", "step_2", "step_3"])
    assert rotate_checkpoints(tmp_path, 2) == [tmp_path / "step_1"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    assert rotate_checkpoints(tmp_path, None) == []


def test_training_state_round_trip():
    state = TrainingState()
    state.step, state.epoch, state.batches_in_epoch, state.skipped_images = 7, 1, 3, 2
    other = TrainingState()
    other.load_state_dict(state.state_dict())
    assert other.state_dict() == {"step": 7, "epoch": 1, "batches_in_epoch": 3, "skipped_images": 2,
                                  "images_seen": 0, "num_processes": 0, "per_device_batch_size": 0}


class RandomItems(Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return torch.rand(1).item(), random.random(), float(np.random.rand())


def test_seeded_items_depend_only_on_seed_epoch_index():
    data = SeededItems(RandomItems(), seed=3)
    before = torch.random.get_rng_state()
    first = [data[i] for i in range(6)]
    assert torch.equal(torch.random.get_rng_state(), before)  # global RNG untouched
    torch.manual_seed(123)
    assert [data[i] for i in reversed(range(6))] == first[::-1]
    assert len(set(first)) == 6
    data.set_epoch(1)
    assert data[0] != first[0]


def test_epoch_seeded_sampler_is_a_reproducible_permutation():
    sampler = EpochSeededSampler(10, seed=0)
    order0 = list(sampler)
    assert sorted(order0) == list(range(10)) and list(sampler) == order0
    sampler.set_epoch(1)
    assert list(sampler) != order0
    assert list(EpochSeededSampler(10, seed=1)) != order0
    with pytest.raises(ValueError, match="empty"):
        EpochSeededSampler(0, seed=0)
