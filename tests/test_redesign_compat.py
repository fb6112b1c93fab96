"""The component redesign changed no behaviour: old checkpoints load, same seed + config → same losses and weights.

Pinned numbers and the fixture folder: printed / written by ``tests/fixtures/make_old_checkpoint.py`` run at commit
0b31b58 (tag ``pre-redesign`` = 798f5d0 plus a config-only commit: modeling, head and loss files identical to the
tag), before the components moved into their own modules; CPU, torch 2.14 / transformers 5.24 / timm 1.0.31. A later
method change may update them deliberately, saying so in its commit.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from artstyle import ArtStyleConfig, ArtStyleForImageClassification, ArtStyleForPretraining, ArtStyleModel

FIXTURES = Path(__file__).parent / "fixtures"
OLD_CHECKPOINT = FIXTURES / "old_checkpoint"
sys.path.insert(0, str(FIXTURES))

from compat_settings import LOSS_TERMS, fixture_inputs, pretraining_steps, summarise, training_config  # noqa: E402

# 3 training steps of training_config() (ViT-tiny, 2 blocks, 32 px, every component on, pooler fused_style)
# Re-pinned on 2026-11-28, deliberately: both views now share one backbone pass (ArtStyleForPretraining._views),
# which changes float rounding only. Step 1 is equal to the old pins within 1e-7 relative, step 2 within 1e-5, and
# step 3 within 5e-5, after two AdamW updates. The old pins: loss 7.429962158203125 / 6.856266975402832 /
# 7.239989280700684, weight sums 4361.12866397565 / 61662.61873903022.
PINNED_STEPS = [
    dict(loss=7.429962158203125, loss_contrastive=3.6212692260742188, loss_layerwise=1.99150550365448,
         loss_distill=2.2971274852752686, loss_gram=1.6643763780593872),
    dict(loss=6.856235980987549, loss_contrastive=3.189885139465332, loss_layerwise=2.1388742923736572,
         loss_distill=1.9864975214004517, loss_gram=1.6036648750305176),
    dict(loss=7.239621162414551, loss_contrastive=3.5820796489715576, loss_layerwise=2.051908254623413,
         loss_distill=2.0512123107910156, loss_gram=1.6059811115264893),
]
PINNED_WEIGHT_SUM, PINNED_WEIGHT_ABS_SUM = 4361.200099481736, 61662.6720317086
PINNED_QUEUE_PTR, PINNED_STATE_KEYS = 18, 165
# the committed fixture folder in eval mode on fixture_inputs()
PINNED_FIXTURE_LOSSES = dict(loss=5.933119297027588, loss_contrastive=2.826564311981201,
                             loss_layerwise=1.3909070491790771, loss_distill=1.525417447090149,
                             loss_gram=1.6483925580978394)
PINNED_FIXTURE_SUMS = dict(last_hidden_state=-1.5196972526609898e-05, pooler_output=-1.1968338534934446,
                           style_embedding=0.028479796135798097, gram=-1.4476143009960651)
# The signed sum of last_hidden_state nearly cancels (its rounding, about 1e-5, is as large as the sum), so its
# magnitude is pinned too. Added in the tenth session from this code, whose other fixture sums match the old pins above
# within 1e-6 relative.
PINNED_FIXTURE_ABS_SUMS = dict(last_hidden_state=3479.018451613316)
# Per-step relative tolerance of the 3 training steps. Step 0 is a forward of the same weights: equal within 2e-7 on
# every host seen. Each AdamW update then amplifies float rounding (its normalised step turns near-zero gradients of
# either sign into steps of about the learning rate), so later steps differ by host: on an AVX2-only host (tenth
# session) step 1 by 6.5e-5, step 2 by 6.3e-4, the weight sums by 5.1e-5 relative. The tolerances keep about 5x that.
STEP_REL_TOLERANCE = (1e-5, 3e-4, 3e-3)
WEIGHT_REL_TOLERANCE = 3e-4


def test_three_pretraining_steps_reproduce_the_pinned_losses_and_weights():
    result = pretraining_steps(ArtStyleForPretraining, training_config())
    for step, (got, pinned, rel) in enumerate(zip(result["losses"], PINNED_STEPS, STEP_REL_TOLERANCE, strict=True)):
        for name in LOSS_TERMS:
            assert got[name] == pytest.approx(pinned[name], rel=rel), (step, name)
    assert result["weight_sum"] == pytest.approx(PINNED_WEIGHT_SUM, rel=WEIGHT_REL_TOLERANCE)
    assert result["weight_abs_sum"] == pytest.approx(PINNED_WEIGHT_ABS_SUM, rel=WEIGHT_REL_TOLERANCE)
    assert (result["queue_ptr"], result["state_keys"]) == (PINNED_QUEUE_PTR, PINNED_STATE_KEYS)


def _load(model_class, **kwargs):
    model, info = model_class.from_pretrained(OLD_CHECKPOINT, output_loading_info=True, **kwargs)
    return model.eval(), info


def test_old_checkpoint_loads_into_pretraining_with_every_key_and_pinned_losses():
    model, info = _load(ArtStyleForPretraining)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    from safetensors.torch import load_file

    saved = load_file(OLD_CHECKPOINT / "model.safetensors")
    assert set(saved) == set(model.state_dict())  # the state-dict key names are the checkpoint format
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    with torch.no_grad():
        got = summarise(model(*fixture_inputs()))
    for name in LOSS_TERMS:
        assert got[name] == pytest.approx(PINNED_FIXTURE_LOSSES[name], rel=1e-5), name


def test_old_checkpoint_loads_into_model_and_classifier_with_pinned_outputs():
    x = fixture_inputs()[0]
    base, info = _load(ArtStyleModel)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        out = base(x)
    for name, pinned in PINNED_FIXTURE_SUMS.items():
        values = getattr(out, name).double()
        # a sum's rounding scales with the magnitudes summed, not with the (cancelling) result
        tolerance = 1e-6 * float(values.abs().sum())
        assert float(values.sum()) == pytest.approx(pinned, rel=1e-4, abs=tolerance), name
    for name, pinned in PINNED_FIXTURE_ABS_SUMS.items():
        assert float(getattr(out, name).double().abs().sum()) == pytest.approx(pinned, rel=1e-5), name
    classifier, info = _load(ArtStyleForImageClassification, num_labels=3)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}  # the new head only
    assert not info["mismatched_keys"]
    with torch.no_grad():
        logits = classifier(x).logits
    torch.testing.assert_close(logits, classifier.classifier(out.pooler_output), rtol=0, atol=0)


def _git(*args):
    return subprocess.run(["git", *args], cwd=Path(__file__).parents[1], capture_output=True, text=True)


def _start_steps(package_root: Path) -> subprocess.Popen:
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); from compat_settings import *; "
            "import artstyle; from artstyle import ArtStyleForPretraining; "
            "print(json.dumps({**pretraining_steps(ArtStyleForPretraining, training_config()), "
            "'artstyle_file': artstyle.__file__}))")
    env = {"PYTHONPATH": str(package_root), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    # cwd = the tree under test: `python -c` puts the working directory first on sys.path, before PYTHONPATH, so from
    # the repository root both processes would import this checkout's artstyle (they did until the tenth session)
    return subprocess.Popen([sys.executable, "-c", code, str(FIXTURES)], env=env, cwd=package_root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(process: subprocess.Popen) -> str:
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-2000:]
    return stdout.strip().splitlines()[-1]


# the commit of tag ``pre-redesign`` (tags do not travel with every clone; the commit is in main's history)
PRE_REDESIGN = "798f5d035d678ae5fadc2f3d6b5d3eddafcb56bd"
# Old code against this checkout on the same host. Step 0 is the same forward; since 2026-11-28 both views share one
# backbone pass, which changes float rounding only, and two AdamW updates amplify it (tenth session, same host: step
# 0 within 7e-8 relative, step 1 within 8e-6, step 2 within 8e-5, weight sums within 2.2e-6).
SAME_HOST_STEP_REL_TOLERANCE = (1e-6, 1e-4, 1e-3)


def test_same_seed_gives_the_losses_and_weights_of_the_pre_redesign_revision(tmp_path):
    """Runs the 3 steps with the code of ``PRE_REDESIGN`` and with this checkout (two processes, same settings, same
    host): equal loss terms and weight sums within float rounding, the same queue pointer and state-dict size. Each
    process reports the file its artstyle came from, so the two trees are known to differ."""
    root = Path(__file__).parents[1]
    if shutil.which("git") is None or _git("cat-file", "-e", f"{PRE_REDESIGN}^{{commit}}").returncode != 0:
        pytest.skip(f"commit {PRE_REDESIGN[:7]} (tag pre-redesign) is not in this clone (a shallow clone): the "
                    "pinned-number test covers it")
    archive = subprocess.run(["git", "archive", PRE_REDESIGN, "artstyle"], cwd=root, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True)
    old_process, new_process = _start_steps(tmp_path), _start_steps(root)
    old, new = json.loads(_result(old_process)), json.loads(_result(new_process))
    assert Path(old["artstyle_file"]).resolve().is_relative_to(tmp_path.resolve()), old["artstyle_file"]
    assert Path(new["artstyle_file"]).resolve().is_relative_to(root.resolve()), new["artstyle_file"]
    for step, (before, after, rel) in enumerate(zip(old["losses"], new["losses"], SAME_HOST_STEP_REL_TOLERANCE,
                                                    strict=True)):
        for name in LOSS_TERMS:
            assert after[name] == pytest.approx(before[name], rel=rel), (step, name)
    for name in ("weight_sum", "weight_abs_sum"):
        assert new[name] == pytest.approx(old[name], rel=5e-5), name
    assert (new["queue_ptr"], new["state_keys"]) == (old["queue_ptr"], old["state_keys"])


def test_a_config_saved_before_gram_loss_existed_keeps_the_paper_mse_and_new_ones_default_to_infonce(tmp_path):
    old = ArtStyleConfig.from_pretrained(OLD_CHECKPOINT)
    assert "gram_loss" not in json.loads((OLD_CHECKPOINT / "config.json").read_text())
    assert old.gram_loss == "mse"
    assert ArtStyleConfig.from_pretrained(OLD_CHECKPOINT, gram_loss="infonce").gram_loss == "infonce"
    new = ArtStyleConfig.tiny()
    assert new.gram_loss == "infonce"
    new.save_pretrained(tmp_path)
    assert ArtStyleConfig.from_pretrained(tmp_path).gram_loss == "infonce"
