"""SSL two-view, fine-tuning and evaluation transforms."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessor

from artstyle.transforms import (
    SSL_PRESETS,
    TwoViewTransform,
    build_eval_transform,
    build_ssl_transform,
    build_ssl_view,
    build_train_transform,
)

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    arr = np.zeros((48, 40, 3), np.uint8)
    arr[..., 0] = 220  # saturated red-ish image: grayscale would visibly change it
    arr[..., 1] = rng.integers(0, 60, (48, 40))
    arr[..., 2] = 30
    return Image.fromarray(arr)


def _denormalize(t):
    return t * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)


def test_two_views_shapes_dtypes_and_differ(image):
    transform = build_ssl_transform("moco_v3", image_size=32, mean=MEAN, std=STD)
    assert isinstance(transform, TwoViewTransform)
    v1, v2 = transform(image)
    assert v1.shape == v2.shape == (3, 32, 32)
    assert v1.dtype == v2.dtype == torch.float32
    assert not torch.allclose(v1, v2)
    rect = build_ssl_transform("style_preserving", image_size=(24, 32), mean=MEAN, std=STD)
    assert rect(image)[0].shape == (3, 24, 32)


def test_deterministic_under_seed(image):
    transform = build_ssl_transform("moco_v3", image_size=32, mean=MEAN, std=STD)
    torch.manual_seed(123)
    a = transform(image)
    torch.manual_seed(123)
    b = transform(image)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_normalisation_uses_given_stats(image):
    # no augmentation at all: a full crop, then normalised with MEAN/STD
    view = build_ssl_view(48, MEAN, STD, crop_scale=(1.0, 1.0), crop_ratio=(40 / 48, 40 / 48), hflip_p=0,
                          jitter_p=0, grayscale_p=0, blur_p=0, solarize_p=0)
    out = view(image)
    expected = torch.from_numpy(np.asarray(image.resize((48, 48), Image.BILINEAR), np.float32) / 255).permute(2, 0, 1)
    assert torch.allclose(_denormalize(out)[0], expected[0], atol=0.02)  # red channel is constant


def test_style_preserving_never_grayscales(image):
    transform = build_ssl_transform("style_preserving", image_size=32, mean=MEAN, std=STD, view2_jitter_p=0.0)
    torch.manual_seed(0)
    for _ in range(40):
        for view in transform(image):
            rgb = _denormalize(view)
            # red stays far above green/blue: the picture never lost its colour
            assert (rgb[0].mean() - rgb[2].mean()) > 0.3
    assert SSL_PRESETS["style_preserving"][0]["grayscale_p"] == 0.0
    assert SSL_PRESETS["style_preserving"][1]["grayscale_p"] == 0.0
    assert all(SSL_PRESETS["style_preserving"][i]["crop_scale"][0] > 0.08 for i in (0, 1))


def test_moco_preset_asymmetric_and_grayscale_happens(image):
    v1_ops = [type(t).__name__ for t in build_ssl_transform("moco_v3", 32, MEAN, STD).view1.transforms]
    v2_ops = [type(t).__name__ for t in build_ssl_transform("moco_v3", 32, MEAN, STD).view2.transforms]
    assert "RandomSolarize" not in v1_ops and "RandomSolarize" in v2_ops
    transform = build_ssl_transform("moco_v3", 32, MEAN, STD, grayscale_p=1.0, jitter_p=0.0, solarize_p=0.0)
    rgb = _denormalize(transform(image)[0])
    assert torch.allclose(rgb[0], rgb[1], atol=1e-5) and torch.allclose(rgb[1], rgb[2], atol=1e-5)


def test_overrides_per_view():
    t = build_ssl_transform("moco_v3", 32, MEAN, STD, view1_blur_p=0.0, crop_scale=(0.5, 1.0))
    names1 = [type(op).__name__ for op in t.view1.transforms]
    assert "RandomApply" in names1  # colour jitter remains
    assert not any(type(op).__name__ == "RandomApply" and type(op.transforms[0]).__name__ == "GaussianBlur"
                   for op in t.view1.transforms)
    assert t.view1.transforms[1].scale == (0.5, 1.0) and t.view2.transforms[1].scale == (0.5, 1.0)


def test_errors():
    with pytest.raises(ValueError, match="Unknown SSL preset 'simclr'"):
        build_ssl_transform("simclr", 32, MEAN, STD)
    with pytest.raises(ValueError, match="Unknown SSL transform setting 'blurr_p'"):
        build_ssl_transform("moco_v3", 32, MEAN, STD, blurr_p=0.5)
    with pytest.raises(ValueError, match="mean and std are required"):
        build_ssl_transform("moco_v3", 32)
    with pytest.raises(ValueError, match="grayscale_p must be in"):
        build_ssl_transform("moco_v3", 32, MEAN, STD, grayscale_p=2.0)


def test_eval_transform_follows_processor(image):
    processor = ViTImageProcessor(size={"height": 20, "width": 28}, image_mean=list(MEAN), image_std=list(STD))
    out = build_eval_transform(processor)(image)
    assert out.shape == (3, 20, 28) and out.dtype == torch.float32
    reference = processor(images=image, return_tensors="pt")["pixel_values"][0]
    assert reference.shape == out.shape
    assert (out - reference).abs().mean() < 0.05  # same resize + normalisation as the processor
    torch.manual_seed(0)
    assert torch.equal(build_eval_transform(processor)(image), out)


@pytest.mark.parametrize("rand_augment", [None, "rand-m9-mstd0.5-inc1"])
def test_train_transform(image, rand_augment):
    processor = ViTImageProcessor(size=32, image_mean=list(MEAN), image_std=list(STD))
    transform = build_train_transform(processor, rand_augment=rand_augment)
    torch.manual_seed(0)
    out = transform(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    names = [type(t).__name__ for t in transform.transforms]
    assert ("RandAugment" in names) == (rand_augment is not None)
    with pytest.raises(ValueError, match="rand_augment"):
        build_train_transform(processor, rand_augment="autoaug")


# ---------------------------------------------------------------------------------------------- shared settings
def test_ssl_view_settings_are_what_build_ssl_transform_uses():
    from artstyle.transforms import blur_kernel_size, ssl_view_settings

    view1, view2 = ssl_view_settings("style_preserving", view2_solarize_p=0.3, crop_scale=(0.5, 1.0))
    assert view1["blur_p"] == 0.5 and view2["blur_p"] == 0.1 and view2["solarize_p"] == 0.3
    assert view1["crop_scale"] == view2["crop_scale"] == (0.5, 1.0) and view1["hue"] == 0.02
    transform = build_ssl_transform("style_preserving", 64, MEAN, STD, view2_solarize_p=0.3, crop_scale=(0.5, 1.0))
    ops = [type(t).__name__ for t in transform.view2.transforms]
    assert "RandomSolarize" in ops and "RandomSolarize" not in [type(t).__name__ for t in transform.view1.transforms]
    crop = transform.view1.transforms[1]
    assert tuple(crop.scale) == (0.5, 1.0)
    assert [blur_kernel_size(s) for s in (16, 24, 64, 224)] == [3, 3, 7, 23]
    with pytest.raises(ValueError, match="Unknown SSL transform setting"):
        ssl_view_settings("moco_v3", blur=0.1)


# ---------------------------------------------------------------------------------------------- image processor
def _processor_images():
    rng = np.random.default_rng(0)
    # smooth content (resampling differences stay small), different sizes and aspect ratios
    images = []
    for index in range(4):
        h, w = 50 + 13 * index, 90 - 11 * index
        yy, xx = np.mgrid[0:h, 0:w]
        array = np.stack([128 + 100 * np.sin(xx / (5 + c) + yy / (7 + index)) for c in range(3)], -1)
        images.append(Image.fromarray(np.clip(array + rng.normal(0, 3, array.shape), 0, 255).astype(np.uint8)))
    return images


def test_fast_image_processor_matches_the_pil_one_and_saved_folders_load(tmp_path):
    from transformers import AutoImageProcessor, ViTImageProcessorPil

    from artstyle import ArtStyleConfig
    from artstyle.processing import build_image_processor, preprocess_on_device

    config = ArtStyleConfig.from_preset("tiny", image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25])
    fast, slow = build_image_processor(config), build_image_processor(config, backend="pil")
    assert isinstance(fast, ViTImageProcessor) and isinstance(slow, ViTImageProcessorPil)
    images = _processor_images()
    fast_values = preprocess_on_device(fast, images, "cpu")
    slow_values = preprocess_on_device(slow, images)
    assert fast_values.shape == slow_values.shape == (4, 3, 64, 64)
    # same resize + normalisation: at most ~2 uint8 steps of resampling difference, on average far less
    assert (fast_values - slow_values).abs().max() < 2.5 / 255 / 0.2
    assert (fast_values - slow_values).abs().mean() < 0.5 / 255 / 0.2
    # a hand-written reference of the normalisation on a constant image
    constant = Image.fromarray(np.full((10, 20, 3), 51, np.uint8))
    expected = (0.2 - torch.tensor([0.4, 0.5, 0.6])) / torch.tensor([0.2, 0.3, 0.25])
    torch.testing.assert_close(preprocess_on_device(fast, [constant])[0, :, 5, 5], expected, atol=1e-5, rtol=0)
    # saved folders load with the fast backend by default, the PIL one on request
    fast.save_pretrained(tmp_path)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), ViTImageProcessor)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path, backend="pil"), ViTImageProcessorPil)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(images, return_tensors="pt")["pixel_values"], fast_values)
    with pytest.raises(ValueError, match="backend"):
        build_image_processor(config, backend="opencv")
