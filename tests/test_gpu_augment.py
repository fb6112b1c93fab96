"""GPU-path augmentation (`artstyle.gpu_augment`) and its data side (`artstyle.fast_data`), on CPU tensors."""

import math

import datasets
import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from PIL import Image

from artstyle.fast_data import (
    CachedDecodedImages,
    DecodedImages,
    augment_generator,
    build_decoded_cache,
    collate_decoded,
    decode_to_uint8,
    make_two_view_batch,
)
from artstyle.gpu_augment import _JITTER_OPS, GPUTwoViewAugment, _gaussian_blur, _grayscale, resolve_augment_on
from artstyle.training.data import seeded_rng
from artstyle.transforms import build_ssl_transform, ssl_view_settings

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
NO_RANDOM_OPS = {"hflip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}


def smooth_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 [count, 3, size, size]: colourful low-frequency images (random gradients + blobs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((count, 3, size, size), np.uint8)
    for i in range(count):
        for c in range(3):
            a, b, phase = rng.uniform(-3, 3, 3)
            base = rng.uniform(0.2, 0.8)
            out[i, c] = np.clip(255 * (base + 0.3 * np.sin(a * xx * 3 + b * yy * 3 + phase)), 0, 255)
    return torch.from_numpy(out)


def normalised_range():
    low = torch.tensor([(0 - m) / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    high = torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    return low, high


@pytest.mark.parametrize("preset", ["moco_v3", "style_preserving"])
def test_shapes_dtype_and_value_range(preset):
    augment = GPUTwoViewAugment(preset, 24, MEAN, STD)
    images = smooth_images(8, 40)
    view1, view2 = augment(images, torch.Generator().manual_seed(0))
    low, high = normalised_range()
    for view in (view1, view2):
        assert view.shape == (8, 3, 24, 24) and view.dtype == torch.float32
        assert (view >= low - 1e-5).all() and (view <= high + 1e-5).all()
    assert not torch.equal(view1, view2)


def test_seeded_determinism():
    augment = GPUTwoViewAugment("moco_v3", 16, MEAN, STD)
    images = smooth_images(6, 32)
    first = augment(images, torch.Generator().manual_seed(3))
    again = augment(images, torch.Generator().manual_seed(3))
    other = augment(images, torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])


def test_parameters_differ_within_a_batch():
    augment = GPUTwoViewAugment("moco_v3", 16, MEAN, STD)
    images = smooth_images(1, 32).expand(16, -1, -1, -1).contiguous()  # 16 copies of ONE image
    view1, _ = augment(images, torch.Generator().manual_seed(0))
    distinct = {tuple(v.flatten()[:50].tolist()) for v in view1}
    assert len(distinct) == 16  # every copy got its own crop / colour parameters
    params = augment.sample_params(torch.tensor([[32, 32]] * 64), augment.views[0], torch.Generator().manual_seed(0))
    assert len({tuple(c.tolist()) for c in params["crops"]}) > 50
    assert 0 < params["flip"].sum() < 64 and 0 < params["gray"].sum() < 64
    assert len({tuple(o.tolist()) for o in params["jitter_order"]}) > 5  # per-sample order of the jitter ops


def test_identity_settings_reproduce_the_input_and_flip_mirrors_it():
    settings = {**NO_RANDOM_OPS, "crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0)}
    images = smooth_images(3, 20)
    expected = TF.normalize(images.float() / 255, MEAN, STD)
    same = GPUTwoViewAugment("moco_v3", 20, MEAN, STD, **settings)(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(same[0], expected, atol=1e-5, rtol=0)
    flipped = GPUTwoViewAugment("moco_v3", 20, MEAN, STD, **{**settings, "hflip_p": 1.0})(
        images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(flipped[1], expected.flip(-1), atol=1e-5, rtol=0)


def test_crop_is_taken_inside_the_valid_region_of_padded_images():
    # valid 16 x 8 red, one replicated red column (what decode_to_uint8 pads with), then blue: no blue in any view
    images = torch.zeros(8, 3, 16, 16, dtype=torch.uint8)
    images[:, 0, :, :9] = 255
    images[:, 2, :, 9:] = 255
    augment = GPUTwoViewAugment("moco_v3", 8, [0.0] * 3, [1.0] * 3, **NO_RANDOM_OPS)
    view1, view2 = augment(images, torch.Generator().manual_seed(1), image_sizes=torch.tensor([[16, 8]] * 8))
    for view in (view1, view2):
        assert view[:, 2].max() < 0.1 and view[:, 0].min() > 0.9


def test_crop_parameters_follow_torchvision_distribution_and_fallback():
    settings = ssl_view_settings("moco_v3")[0]
    sizes = torch.tensor([[120, 90]] * 4000)
    crops = GPUTwoViewAugment.sample_crops(sizes, settings["crop_scale"], settings["crop_ratio"],
                                           torch.Generator().manual_seed(0))
    top, left, h, w = crops.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 120).all() and (left + w <= 90).all()
    ours = (h * w / (120 * 90)).numpy()
    rrc = T.RandomResizedCrop(8, scale=settings["crop_scale"], ratio=settings["crop_ratio"])
    torch.manual_seed(0)
    reference = np.array([(p["height"] * p["width"]) / (120 * 90)
                          for p in (rrc.make_params([torch.zeros(3, 120, 90)]) for _ in range(4000))])
    assert abs(ours.mean() - reference.mean()) < 0.02 and abs(np.median(ours) - np.median(reference)) < 0.03
    assert ours.min() >= 0.07 and ours.max() <= 1.0
    # a 10 x 1000 strip: no try fits the ratio range, torchvision's central-crop fallback (h=10, w=round(10*4/3))
    strip = GPUTwoViewAugment.sample_crops(torch.tensor([[10, 1000]]), (0.08, 1.0), (3 / 4, 4 / 3),
                                           torch.Generator().manual_seed(0))
    assert strip[0].tolist() == [0.0, (1000 - 13) // 2, 10.0, 13.0]


@pytest.mark.parametrize("op_index", range(4))
def test_colour_operations_match_torchvision(op_index):
    images = smooth_images(4, 12).float() / 255
    factors = torch.tensor([0.6, 1.0, 1.3, 1.8]) if op_index < 3 else torch.tensor([-0.1, 0.0, 0.05, 0.1])
    reference_fn = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)[op_index]
    ours = _JITTER_OPS[op_index](images.clone(), factors)
    reference = torch.stack([reference_fn(img, float(f)) for img, f in zip(images, factors)])
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=0)
    torch.testing.assert_close(_grayscale(images), TF.rgb_to_grayscale(images), atol=1e-6, rtol=0)


def test_blur_and_solarize_match_torchvision():
    images = smooth_images(3, 24)
    size, sigma_value = 24, 1.3
    settings = {**NO_RANDOM_OPS, "crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "blur_p": 1.0,
                "blur_sigma": (sigma_value, sigma_value)}
    blurred, _ = GPUTwoViewAugment("moco_v3", size, [0.0] * 3, [1.0] * 3, **settings)(
        images, torch.Generator().manual_seed(0))
    kernel = 3 if size < 30 else None  # artstyle.transforms.blur_kernel_size(24) == 3
    reference = TF.gaussian_blur(images.float() / 255, [kernel, kernel], [sigma_value, sigma_value])
    torch.testing.assert_close(blurred, reference, atol=1e-5, rtol=0)
    settings = {**NO_RANDOM_OPS, "crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "solarize_p": 1.0}
    solarized, _ = GPUTwoViewAugment("moco_v3", size, [0.0] * 3, [1.0] * 3, **settings)(
        images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(solarized * 255, TF.solarize(images, 128).float(), atol=1e-3, rtol=0)


@pytest.mark.parametrize("preset", ["moco_v3", "style_preserving"])
def test_statistics_close_to_the_cpu_transforms(preset):
    count, size = 96, 24
    images = smooth_images(count, 48, seed=1)
    gpu = GPUTwoViewAugment(preset, size, MEAN, STD)(images, torch.Generator().manual_seed(0))
    cpu_transform = build_ssl_transform(preset, size, MEAN, STD)
    cpu_views = []
    for index, image in enumerate(images):
        with seeded_rng(index):
            cpu_views.append(cpu_transform(Image.fromarray(image.permute(1, 2, 0).numpy())))
    cpu = [torch.stack([v[k] for v in cpu_views]) for k in (0, 1)]
    for k in (0, 1):
        # channel means over the batch: within 3.5 standard errors of the per-image means (+ 0.05 for the CPU path's
        # rounding to uint8 after each colour op, which biases it down); spreads within 10 %
        per_image = [v.mean(dim=(2, 3)) for v in (gpu[k], cpu[k])]
        stderr = torch.sqrt((per_image[0].var(0) + per_image[1].var(0)) / count)
        assert ((per_image[0].mean(0) - per_image[1].mean(0)).abs() < 3.5 * stderr + 0.05).all(), (preset, k)
        torch.testing.assert_close(gpu[k].std(dim=(0, 2, 3)), cpu[k].std(dim=(0, 2, 3)), atol=0.15, rtol=0.1)

        def gray_fraction(views):
            raw = views * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
            return ((raw[:, 0] - raw[:, 1]).abs().amax(dim=(1, 2)) < 0.02).float().mean().item()

        expected = ssl_view_settings(preset)[k]["grayscale_p"]
        assert abs(gray_fraction(gpu[k]) - expected) < 0.1
        assert abs(gray_fraction(gpu[k]) - gray_fraction(cpu[k])) < 0.12


def test_bad_inputs_raise_value_errors():
    augment = GPUTwoViewAugment("moco_v3", 8, MEAN, STD)
    with pytest.raises(ValueError, match="uint8"):
        augment(torch.zeros(2, 3, 8, 8), torch.Generator())
    with pytest.raises(ValueError, match="image_sizes"):
        augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.Generator(), image_sizes=torch.tensor([[9, 8]] * 2))
    with pytest.raises(ValueError, match="Unknown SSL preset"):
        GPUTwoViewAugment("simclr", 8, MEAN, STD)
    with pytest.raises(ValueError, match="mean and std are required"):
        GPUTwoViewAugment("moco_v3", 8, None, None)


def test_resolve_augment_on():
    assert resolve_augment_on("auto", "cpu") == "cpu"
    assert resolve_augment_on("auto", torch.device("cuda", 0)) == "gpu"
    assert resolve_augment_on("gpu", "cpu") == "gpu" and resolve_augment_on("cpu", "cuda") == "cpu"
    with pytest.raises(ValueError, match="augment_on"):
        resolve_augment_on("tpu", "cpu")


# ---------------------------------------------------------------------------------------------- fast_data
def test_decode_to_uint8_keeps_aspect_and_replicates_the_border():
    array = np.zeros((30, 60, 3), np.uint8)
    array[:, :, 1] = 200
    array[-1, :, 0] = 50  # last row: distinct
    pixels, valid = decode_to_uint8(Image.fromarray(array), 40)
    assert pixels.shape == (3, 40, 40) and pixels.dtype == torch.uint8 and valid == (20, 40)
    assert (pixels[1] >= 190).all()  # the padding repeats the image's border, no black band
    small, valid = decode_to_uint8(Image.fromarray(array[:10, :20]), 40)  # never enlarged
    assert valid == (10, 20) and torch.equal(small[:, :10, :20], torch.from_numpy(array[:10, :20]).permute(2, 0, 1))


@pytest.fixture
def image_split(tmp_path):
    paths = []
    for index in range(5):
        path = tmp_path / f"{index}.png"
        Image.fromarray(np.full((20 + index, 30, 3), 40 * index, np.uint8)).save(path)
        paths.append(str(path))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    paths.append(str(broken))
    return datasets.Dataset.from_dict({"image": paths}).cast_column("image", datasets.Image())


def test_decoded_images_collate_and_cache_round_trip(image_split, tmp_path, caplog):
    dataset = DecodedImages(image_split, 16)
    assert dataset[5] is None and "broken.png" in caplog.text
    batch = collate_decoded([dataset[i] for i in range(6)])
    assert batch["pixel_values_uint8"].shape == (5, 3, 16, 16) and batch["num_skipped"] == 1
    assert batch["image_sizes"].tolist() == [[11, 16], [11, 16], [12, 16], [12, 16], [13, 16]]
    assert collate_decoded([None, None]) is None

    path = build_decoded_cache(dataset, tmp_path / "cache")
    cached = CachedDecodedImages(path)
    assert len(cached) == 6 and cached[5] is None
    for index in range(5):
        assert torch.equal(cached[index]["pixel_values_uint8"], dataset[index]["pixel_values_uint8"])
        assert cached[index]["image_size"] == dataset[index]["image_size"]
    modified = path.stat().st_mtime_ns
    assert build_decoded_cache(dataset, tmp_path / "cache") == path and path.stat().st_mtime_ns == modified
    assert build_decoded_cache(DecodedImages(image_split, 12), tmp_path / "cache") != path  # size in fingerprint
    with pytest.raises(FileNotFoundError, match="decoded cache"):
        CachedDecodedImages(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="image_column"):
        DecodedImages(image_split, 16, image_column="img")


def test_make_two_view_batch_is_a_pure_function_of_the_batch_seed(image_split):
    dataset = DecodedImages(image_split, 16)
    batch = collate_decoded([dataset[i] for i in range(5)])
    augment = GPUTwoViewAugment("style_preserving", 8, MEAN, STD)
    first = make_two_view_batch(batch, augment, augment_generator(0, 1, 7), "cpu")
    again = make_two_view_batch(batch, augment, augment_generator(0, 1, 7), "cpu")
    assert first["pixel_values"].shape == first["pixel_values_2"].shape == (5, 3, 8, 8)
    assert first["num_skipped"] == 0
    assert torch.equal(first["pixel_values"], again["pixel_values"])
    for other in (augment_generator(0, 1, 8), augment_generator(0, 2, 7), augment_generator(1, 1, 7),
                  augment_generator(0, 1, 7, process_index=1)):
        assert not torch.equal(make_two_view_batch(batch, augment, other, "cpu")["pixel_values"],
                               first["pixel_values"])
    assert math.isfinite(first["pixel_values_2"].sum().item())


# ---------------------------------------------------------------------------------------------- branch-free apply
def test_hue_matches_torchvision_on_ties_and_pure_colours():
    # every 0/0.5/1 colour (ties of two and three channels, greys, black, white) plus random ones
    levels = torch.tensor([0.0, 0.5, 1.0])
    grid = torch.cartesian_prod(levels, levels, levels).T.reshape(3, 3, 9)  # 27 colours as a 3 x 9 image
    images = torch.cat([grid[None].expand(5, -1, -1, -1), torch.rand(5, 3, 3, 9, generator=torch.Generator()
                                                                    .manual_seed(0))])
    factors = torch.tensor([-0.5, -0.3, 0.0, 0.25, 0.5] * 2)
    ours = _JITTER_OPS[3](images.clone(), factors)
    reference = torch.stack([TF.adjust_hue(img, float(f)) for img, f in zip(images, factors)])
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=0)


def test_per_sample_blur_matches_torchvision_for_each_sigma():
    images = smooth_images(4, 20).float() / 255
    sigmas = torch.tensor([0.1, 0.7, 1.3, 2.0])
    ours = _gaussian_blur(images, 5, sigmas)
    reference = torch.stack([TF.gaussian_blur(img, [5, 5], [float(s), float(s)]) for img, s in zip(images, sigmas)])
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def reference_view(image: torch.Tensor, params: dict, index: int, view: dict) -> torch.Tensor:
    """One sample of a full-image view (crop = whole image, no resize) with torchvision's functional ops, in the
    sample's own jitter order: what `GPUTwoViewAugment.apply` must compute, without masks or identity factors."""
    x = image.float() / 255
    if params["flip"][index]:
        x = x.flip(-1)
    if params["jitter"][index]:
        functions = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for op_index in params["jitter_order"][index].tolist():
            x = functions[op_index](x, float(params["jitter_factors"][index, op_index]))
    if params["gray"][index]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if params["blur"][index]:
        sigma = float(params["sigma"][index])
        x = TF.gaussian_blur(x, [3, 3], [sigma, sigma])
    if params["solarize"][index]:
        x = torch.where(x >= view["solarize_threshold"] / 255, 1 - x, x)
    return x


def test_branch_free_view_equals_torchvision_ops_applied_per_sample():
    # every random operation on, at its own per-sample probability; full-image crops so that no resampling differs
    settings = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "hflip_p": 0.5, "jitter_p": 0.7,
                "grayscale_p": 0.3, "blur_p": 0.5, "solarize_p": 0.3, "hue": 0.3}
    augment = GPUTwoViewAugment("moco_v3", 16, [0.0] * 3, [1.0] * 3, **settings)
    images = smooth_images(24, 16, seed=2)
    params = augment.sample_params(torch.tensor([[16, 16]] * 24), augment.views[0], torch.Generator().manual_seed(5))
    for key in ("flip", "jitter", "gray", "blur", "solarize"):  # both branches of every mask occur
        assert 0 < int(params[key].sum()) < 24, key
    ours = augment.apply(images.float() / 255, params, augment.views[0])
    for index in range(24):
        expected = reference_view(images[index], params, index, augment.views[0])
        torch.testing.assert_close(ours[index], expected, atol=1e-4, rtol=0, msg=f"sample {index}")


def count_ops(function, *args) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += 1
            return func(*args, **(kwargs or {}))

    with Counter() as counter:
        function(*args)
    return counter.count


@pytest.mark.parametrize("preset", ["moco_v3", "style_preserving"])
def test_launches_per_view_do_not_depend_on_the_batch_or_the_draws(preset):
    # the device work of a view is a fixed sequence of batched operations: no per-operation index subsets, whose
    # number (and launches) would vary with the random draws
    augment = GPUTwoViewAugment(preset, 16, MEAN, STD)
    for view in augment.views:
        counts = set()
        for count, seed in ((4, 0), (4, 1), (64, 2)):
            images = smooth_images(count, 24, seed=seed).float() / 255
            params = augment.sample_params(torch.tensor([[24, 24]] * count), view, torch.Generator().manual_seed(seed))
            augment.apply(images, params, view)  # constants made once
            counts.add(count_ops(augment.apply, images, params, view))
        assert len(counts) == 1 and max(counts) < 300, counts


@pytest.mark.parametrize("preset", ["moco_v3", "style_preserving"])
def test_compiled_augmentation_is_one_graph_and_gives_the_eager_views(preset):
    import torch._dynamo as dynamo

    images = smooth_images(6, 24, seed=2)
    eager = GPUTwoViewAugment(preset, 16, MEAN, STD)
    sizes = torch.tensor([[24, 24], [20, 24], [24, 13], [24, 24], [9, 9], [24, 24]])
    packed = torch.stack([eager.pack_params(eager.sample_params(sizes, view, torch.Generator().manual_seed(4)))
                          for view in eager.views])
    mean, std = eager._stats(images.device)
    explained = dynamo.explain(eager._views)(images, packed, mean, std)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    dynamo.reset()
    compiled = GPUTwoViewAugment(preset, 16, MEAN, STD).compile(backend="aot_eager")
    for seed in (0, 1):  # a second call reuses the graph: new parameters are inputs, not constants
        want = eager(images, torch.Generator().manual_seed(seed), image_sizes=sizes)
        got = compiled(images, torch.Generator().manual_seed(seed), image_sizes=sizes)
        for a, b in zip(want, got):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    assert not torch.equal(want[0], eager(images, torch.Generator().manual_seed(0), image_sizes=sizes)[0])
    dynamo.reset()


def test_a_failing_augmentation_compile_falls_back_to_eager_with_a_warning(caplog):
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no kernels for this device")

    images = smooth_images(4, 20, seed=1)
    eager = GPUTwoViewAugment("moco_v3", 16, MEAN, STD)(images, torch.Generator().manual_seed(0))
    augment = GPUTwoViewAugment("moco_v3", 16, MEAN, STD).compile(backend=broken_backend)
    with caplog.at_level("WARNING", logger="artstyle.gpu_augment"):
        views = augment(images, torch.Generator().manual_seed(0))
    assert "torch.compile of the GPU augmentation failed" in caplog.text and "no kernels" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(views, eager))
    caplog.clear()
    augment(images, torch.Generator().manual_seed(1))  # eager from now on: no second attempt, no second warning
    assert not hasattr(augment, "_compiled_views") and "failed" not in caplog.text
    import torch._dynamo as dynamo
    dynamo.reset()
