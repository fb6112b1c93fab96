"""run_pretrain.py --decoded_cache: the GPU augmentation path read from a decoded uint8 cache (tiny, CPU)."""

import json
import logging
import pickle
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import PartialState

import run_pretrain
from artstyle.data import load_style_dataset
from artstyle.fast_data import CachedDecodedImages, DecodedImages, build_decoded_cache, decoded_cache_path

from conftest import reset_training_state

TINY = {"backbone_depth": 2, "image_size": 32, "patch_size": 8, "queue_size": 64, "projection_hidden_dim": 64,
        "projection_dim": 32, "distill_hidden_dim": 32, "layer_head_dim": 32, "style_dim": 32, "gram_dim": 8}
DEMO = {"num_images": 48, "image_size": 32}


def tiny_args(tmp_path, out, *extra):
    return [
        "--config_overrides", json.dumps(TINY),
        "--dataset_options", json.dumps({**DEMO, "cache_dir": str(tmp_path / "cache")}),
        "--output_dir", str(tmp_path / out),
        "--per_device_train_batch_size", "8",
        "--max_train_steps", "2",
        "--dataloader_num_workers", "0",
        "--report_to", "none",
        "--seed", "0",
        "--deterministic",
        "--augment_on", "gpu", "--decode_size", "40",
        *extra,
    ]


@pytest.fixture(autouse=True)
def _reset_global_state():
    yield
    reset_training_state()


_reset = reset_training_state


def _demo_decoded(tmp_path, size=40):
    train = load_style_dataset("demo", cache_dir=str(tmp_path / "cache"), **DEMO)["train"]
    return DecodedImages(train, size)


def test_cached_items_equal_decoded_items_on_the_demo(tmp_path):
    decoded = _demo_decoded(tmp_path)
    rng = torch.get_rng_state()
    path = build_decoded_cache(decoded)
    assert torch.equal(torch.get_rng_state(), rng)  # building moves no global RNG: the model init stays the same
    # beside the datasets cache (the split's own folder), named by the split's fingerprint and the size
    assert path == decoded_cache_path(decoded)
    assert path.parent == Path(decoded.dataset.cache_files[0]["filename"]).parent
    assert path.name == f"decoded_{decoded.fingerprint()}_40.npy"
    cached = CachedDecodedImages(path)
    assert len(cached) == len(decoded) == 36
    for index in range(len(decoded)):
        a, b = cached[index], decoded[index]
        assert a["pixel_values_uint8"].dtype == torch.uint8 and torch.equal(a["pixel_values_uint8"],
                                                                            b["pixel_values_uint8"])
        assert a["image_size"] == b["image_size"]
    # spawn/forkserver DataLoader workers get the dataset pickled: the path travels, not the pixels
    data = pickle.dumps(cached)
    assert len(data) < cached.pixels.nbytes
    copy = pickle.loads(data)
    assert isinstance(copy.pixels, np.memmap) and torch.equal(copy[3]["pixel_values_uint8"],
                                                               decoded[3]["pixel_values_uint8"])


def test_two_concurrent_builders_decode_once(tmp_path, monkeypatch):
    """Two runs building the same cache at once: one decodes, the other waits on the lock and reuses its file."""
    decoded = _demo_decoded(tmp_path)
    reference = [decoded[i]["pixel_values_uint8"] for i in range(len(decoded))]
    calls, original = [], DecodedImages.__getitem__

    def slow_decode(self, index):
        calls.append(index)
        time.sleep(0.005)  # keeps the first builder busy while the second one starts
        return original(self, index)

    monkeypatch.setattr(DecodedImages, "__getitem__", slow_decode)
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: build_decoded_cache(DecodedImages(decoded.dataset, 40)), range(2)))
    assert paths[0] == paths[1] and sorted(calls) == list(range(len(decoded)))  # decoded once, not twice
    assert not list(paths[0].parent.glob("*.tmp.npy"))
    cached = CachedDecodedImages(paths[0])
    assert all(torch.equal(cached[i]["pixel_values_uint8"], reference[i]) for i in range(len(decoded)))


def test_decoded_cache_on_trains_like_off_and_is_reused(tmp_path, caplog):
    off = run_pretrain.main(tiny_args(tmp_path, "off", "--decoded_cache", "off"))
    assert off["decoded_cache"] is False and off["decoded_cache_s"] is None
    assert not list((tmp_path / "cache").rglob("decoded_*.npy"))  # off: nothing cached

    _reset()
    with caplog.at_level(logging.INFO):
        on = run_pretrain.main(tiny_args(tmp_path, "on", "--decoded_cache", "on"))
    assert on["decoded_cache"] is True and on["decoded_cache_s"] >= 0
    assert "built in" in caplog.text
    files = sorted(p.name for p in (tmp_path / "cache").rglob("decoded_*.npy"))
    assert len(files) == 2 and files[0].endswith("_40.npy") and files[1].endswith("_40_sizes.npy")
    # same data, same seeded augmentation: the same losses and weights
    assert on["train_loss"] == off["train_loss"]
    assert on["replica_checksums"] == off["replica_checksums"]
    saved = json.loads((tmp_path / "on" / "all_results.json").read_text())
    assert saved["decoded_cache"] is True

    # a second run reuses the cache: no decoding at all, the file is not rewritten
    cache = next((tmp_path / "cache").rglob("decoded_*_40.npy"))
    modified = cache.stat().st_mtime_ns

    def no_decoding(self, index):
        raise AssertionError("decoded an image although the cache exists")

    _reset()
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.MonkeyPatch.context() as patch:
        patch.setattr(DecodedImages, "__getitem__", no_decoding)
        again = run_pretrain.main(tiny_args(tmp_path, "again"))  # the default: auto, 36 x 3 x 40^2 bytes fit
    assert again["decoded_cache"] is True and "reused" in caplog.text and "built in" not in caplog.text
    assert cache.stat().st_mtime_ns == modified
    assert again["replica_checksums"] == off["replica_checksums"]


def test_auto_follows_the_size_limit_and_cpu_ignores_the_option(tmp_path):
    decoded = _demo_decoded(tmp_path)  # 36 images x 3 x 40 x 40 = 172,800 bytes
    PartialState()  # the accelerate logger of the "too large" message needs it
    assert run_pretrain.use_decoded_cache("auto", decoded, 0.000173)
    assert not run_pretrain.use_decoded_cache("auto", decoded, 0.000172)
    assert run_pretrain.use_decoded_cache("on", decoded, 1e-12)
    assert not run_pretrain.use_decoded_cache("off", decoded, 100.0)
    _, data_args, _ = run_pretrain.parse_args(["--augment_on", "cpu"])
    assert data_args.decoded_cache == "auto" and data_args.decoded_cache_max_gb == 4.0


@pytest.mark.parametrize("argv, match", [
    (["--augment_on", "cpu", "--decoded_cache", "on"], r"--decoded_cache on needs --augment_on gpu.*--augment_on cpu"),
    (["--decoded_cache", "yes"], "--decoded_cache must be one of auto, on, off"),
    (["--decoded_cache_max_gb", "0"], "--decoded_cache_max_gb must be > 0"),
    (["--decoded_cache_device", "gpu"], "--decoded_cache_device must be one of auto, host, device"),
    (["--decoded_cache_device", "device", "--decoded_cache", "off"],
     r"--decoded_cache_device device needs the decoded cache .*--decoded_cache off"),
    (["--decoded_cache_device", "device", "--augment_on", "cpu"],
     r"--decoded_cache_device device needs the decoded cache .*--augment_on cpu"),
])
def test_bad_decoded_cache_arguments_name_the_flags(argv, match):
    with pytest.raises(ValueError, match=match):
        run_pretrain.parse_args(argv)


def test_on_with_auto_resolving_to_cpu_names_both_flags(tmp_path):
    args = [a for a in tiny_args(tmp_path, "auto_cpu") if a not in ("--augment_on", "gpu")]
    with pytest.raises(ValueError, match=r"--decoded_cache on needs .*--augment_on auto chose cpu"):
        run_pretrain.main(args + ["--decoded_cache", "on"])
    assert not list((tmp_path / "cache").rglob("decoded_*.npy"))


# ------------------------------------------------------------------------------ the decoded cache on the device
def test_device_cache_trains_like_the_host_cache(tmp_path):
    host = run_pretrain.main(tiny_args(tmp_path, "host", "--decoded_cache", "on", "--decoded_cache_device", "host"))
    assert host["decoded_cache_device"] == "host"
    _reset()
    device = run_pretrain.main(tiny_args(tmp_path, "device", "--decoded_cache", "on",
                                         "--decoded_cache_device", "device"))
    assert device["decoded_cache_device"] == "device"
    # the same items in the same order, the same seeded views: the same losses and weights
    assert device["train_loss"] == host["train_loss"]
    assert device["replica_checksums"] == host["replica_checksums"]
    _reset()
    auto = run_pretrain.main(tiny_args(tmp_path, "auto", "--decoded_cache", "on"))
    assert auto["decoded_cache_device"] == "host"  # auto: device on CUDA only


def test_device_cache_gathers_the_cached_items_and_counts_bad_ones(tmp_path):
    from artstyle.fast_data import DeviceDecodedCache, collate_cache_indices, make_two_view_batch

    decoded = _demo_decoded(tmp_path)
    path = build_decoded_cache(decoded)
    sizes_path = path.with_name(path.stem + "_sizes.npy")
    sizes = np.load(sizes_path)
    sizes[3] = -1  # as build_decoded_cache marks an undecodable image
    np.save(sizes_path, sizes)
    host = CachedDecodedImages(path)
    cache = DeviceDecodedCache(path, "cpu", chunk=5)  # chunks that do not divide the 36 images
    assert len(cache) == 36 and cache.nbytes == 36 * 3 * 40 * 40
    pixels, got_sizes = cache.gather(np.array([7, 0, 35]))
    for row, index in enumerate((7, 0, 35)):
        assert torch.equal(pixels[row], host[index]["pixel_values_uint8"])
        assert tuple(got_sizes[row].tolist()) == host[index]["image_size"]
    items = cache.dataset()
    assert items[3] is None and items[4] == {"cache_index": 4}
    batch = collate_cache_indices([items[i] for i in (2, 3, 4)])
    assert batch["num_skipped"] == 1 and batch["cache_indices"].tolist() == [2, 4]
    assert isinstance(batch["cache_indices"], np.ndarray)  # stays on the host under accelerate
    assert collate_cache_indices([None, None]) is None
    with pytest.raises(ValueError, match=r"within \[0, 36\)"):
        cache.gather(np.array([36]))
    with pytest.raises(ValueError, match="no DeviceDecodedCache"):
        make_two_view_batch(batch, None, torch.Generator(), "cpu")
    with pytest.raises(FileNotFoundError, match="nope_sizes.npy"):
        np.save(tmp_path / "nope.npy", np.zeros((1, 3, 2, 2), np.uint8))
        DeviceDecodedCache(tmp_path / "nope.npy", "cpu")


def test_use_device_cache_modes():
    cpu = torch.device("cpu")
    assert run_pretrain.use_device_cache("device", 10**12, cpu)
    assert not run_pretrain.use_device_cache("host", 1, cpu)
    assert not run_pretrain.use_device_cache("auto", 1, cpu)  # auto: CUDA only
    _, data_args, _ = run_pretrain.parse_args([])
    assert data_args.decoded_cache_device == "auto"


def test_device_cache_with_auto_resolving_to_cpu_says_why(tmp_path):
    args = [a for a in tiny_args(tmp_path, "auto_cpu") if a not in ("--augment_on", "gpu")]
    with pytest.raises(ValueError, match=r"--decoded_cache_device device: no decoded cache .*chose cpu"):
        run_pretrain.main(args + ["--decoded_cache_device", "device"])


def test_torch_compile_compiles_the_gpu_augmentation_too(tmp_path):
    # the 'eager' backend captures with dynamo (no C++ kernels: inductor takes minutes on a CPU); same training
    from artstyle.gpu_augment import GPUTwoViewAugment

    eager = run_pretrain.main(tiny_args(tmp_path, "eager", "--decoded_cache_device", "device"))
    calls = []
    original = GPUTwoViewAugment.compile

    def spy(self, **kwargs):
        calls.append(kwargs)
        return original(self, **kwargs)

    _reset()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GPUTwoViewAugment, "compile", spy)
        compiled = run_pretrain.main(tiny_args(tmp_path, "compiled", "--decoded_cache_device", "device",
                                               "--torch_compile", "--torch_compile_backend", "eager"))
    assert calls == [{"backend": "eager"}]  # no CUDA-graph mode for the augmentation
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-5)


def test_cache_indices_are_read_without_seeding_the_generators():
    # seeding three generators per item cost 15 ms per 128-index batch in the main process (the loader has no
    # workers on this path); index items draw no random numbers, so SeededItems skips it for them
    from artstyle.fast_data import CacheIndices
    from artstyle.training import data as training_data

    def no_seeding(seed):
        raise AssertionError("seeded_rng called")

    sizes = np.array([[4, 4], [-1, -1], [4, 4]])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_data, "seeded_rng", no_seeding)
        items = training_data.SeededItems(CacheIndices(sizes), seed=3)
        assert [items[i] for i in range(3)] == [{"cache_index": 0}, None, {"cache_index": 2}]
        with pytest.raises(AssertionError, match="seeded_rng called"):  # every other dataset is still seeded
            training_data.SeededItems([1, 2], seed=3)[0]
