import pytest

from artstyle import ArtStyleConfig

from conftest import tiny_config


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"tau_student": 0}, "tau_student"),
        ({"tau_teacher": -0.1}, "tau_teacher"),
        ({"tau_layerwise": 0.0}, "tau_layerwise"),
        ({"tau_distill": -1}, "tau_distill"),
        ({"soft_alpha": 1.5}, "soft_alpha"),
        ({"soft_alpha": -0.1}, "soft_alpha"),
        ({"soft_mode": "hard"}, "soft_mode"),
        ({"pooler": "mean"}, "pooler"),
        ({"fusion_layers": [0, 5]}, "fusion_layers"),
        ({"fusion_layers": [-3]}, "fusion_layers"),
        ({"fusion_layers": [0, -2]}, "fusion_layers"),  # the same block twice (depth 2)
        ({"distill_layers": [2]}, "distill_layers"),
        ({"gram_layer": 7}, "gram_layer"),
        ({"gram_dim": 0}, "gram_dim"),
        ({"queue_size": -1}, "queue_size"),
        ({"weight_gram": -0.5}, "weight_gram"),
        ({"weight_distill": -1}, "weight_distill"),
        ({"backbone": "not_a_model_xyz"}, "backbone"),
        ({"image_size": 30}, "image_size"),
        ({"momentum_base": 1.2}, "momentum_base"),
    ],
)
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        tiny_config(**overrides)


def test_negative_layer_indices_resolve_against_depth():
    config = tiny_config(backbone_depth=4, fusion_layers=[-1, 0], distill_layers=[-2], gram_layer=-2)
    assert config.num_blocks == 4
    assert config.resolved_fusion_layers() == [0, 3]
    assert config.resolved_distill_layers() == [2]
    assert config.resolved_gram_layer() == 2
    assert tiny_config(backbone_depth=3).resolved_fusion_layers() == [0, 1, 2]  # None = every block


def test_presets_and_roundtrip(tmp_path):
    tiny = ArtStyleConfig.tiny()
    assert (tiny.backbone, tiny.image_size, tiny.patch_size, tiny.num_blocks) == ("vit_tiny_patch16_224", 64, 8, 12)
    base = ArtStyleConfig.vit_base()
    assert base.hidden_size == 768 and base.image_size == 224
    assert ArtStyleConfig.vit_small().hidden_size == 384
    with pytest.raises(ValueError, match="config_preset"):
        ArtStyleConfig.from_preset("huge")
    config = tiny_config(pooler="fused_style", soft_mode="ascl", fusion_layers=[0, 1])
    config.save_pretrained(tmp_path)
    loaded = ArtStyleConfig.from_pretrained(tmp_path)
    for key in ("pooler", "soft_mode", "fusion_layers", "backbone_depth", "queue_size", "image_mean"):
        assert getattr(loaded, key) == getattr(config, key)


def test_demo_preset_is_tiny_on_a_smaller_backbone():
    demo, tiny = ArtStyleConfig.from_preset("demo"), ArtStyleConfig.tiny()
    assert (demo.backbone, demo.hidden_size, demo.num_blocks) == ("test_vit3", 96, 9)
    differing = {k for k, v in demo.to_dict().items() if tiny.to_dict()[k] != v}
    assert differing == {"backbone"}  # heads, image size, patch, queue: the tiny preset's
    assert ArtStyleConfig.from_preset("demo", backbone_depth=2, queue_size=8).num_blocks == 2
    assert ArtStyleConfig.from_preset("demo", backbone="vit_tiny_patch16_224").hidden_size == 192
    with pytest.raises(ValueError, match=r"unknown preset 'micro'.*'demo'"):
        ArtStyleConfig.from_preset("micro")


def test_moco_v3_baseline_switches_components_off():
    baseline = tiny_config().moco_v3_baseline()
    assert (baseline.weight_layerwise, baseline.weight_distill, baseline.weight_gram) == (0, 0, 0)
    assert baseline.soft_alpha == 1.0 and baseline.pooler == "cls"
    assert not baseline.uses_fusion and not baseline.uses_gram


def test_components_name_the_switches_and_round_trip():
    config = tiny_config(weight_gram=0.25)
    assert config.components == {"layerwise": True, "distill": True, "soft": True, "gram": True}
    baseline = config.moco_v3_baseline()
    assert baseline.components == dict.fromkeys(baseline.components, False)
    switches = (baseline.weight_layerwise, baseline.weight_distill, baseline.weight_gram, baseline.soft_alpha)
    assert switches == (0, 0, 0, 1)
    back = baseline.with_components(reference=config, gram=True)
    assert back.components == {"layerwise": False, "distill": False, "soft": False, "gram": True}
    assert back.weight_gram == 0.25  # the reference's value, not the class default
    assert baseline.with_components(gram=True).weight_gram == 1.0  # class default without a reference
    assert config.with_components(soft=False).soft_alpha == 1.0
    assert config.weight_gram == 0.25  # the original is untouched


def test_with_components_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown component"):
        tiny_config().with_components(fusion=True)
