"""Shared test settings: offline Hub, small threads, deterministic seeds."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402


def reset_training_state() -> None:
    """Undo what a run_pretrain.main() call leaves behind in the process: deterministic algorithms and accelerate's
    shared state singletons."""
    from accelerate.state import AcceleratorState, GradientState

    torch.use_deterministic_algorithms(False)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def tiny_config(**overrides):
    """The smallest useful ArtStyleConfig: 2 ViT-tiny blocks, 32 px, patch 8 (16 tokens)."""
    from artstyle import ArtStyleConfig

    values = dict(backbone_depth=2, image_size=32, patch_size=8, queue_size=24, projection_hidden_dim=64,
                  projection_dim=32, layer_head_dim=32, distill_hidden_dim=32, gram_dim=8, style_dim=16)
    values.update(overrides)
    return ArtStyleConfig.tiny(**values)
