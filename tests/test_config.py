"""The layered configuration: defaults < YAML < key=value overrides; unknown keys are errors."""

import pytest
import yaml

from medaug.config import (
    Config,
    build_config,
    config_to_dict,
    flatten,
    load_config,
    parse_override,
    write_config,
)
from medaug.errors import MedaugError


def test_defaults_match_reference_settings():
    cfg = Config()
    p = cfg.pretrain
    assert (cfg.moco.momentum, cfg.moco.temperature, p.lr, p.weight_decay) == (0.999, 0.2, 1e-4, 1e-4)
    assert p.lr_milestones == [12, 18] and p.lr_gamma == 0.1
    assert (cfg.eval.linear_lr, cfg.eval.linear_batch_size, cfg.eval.linear_epochs) == (3e-5, 16, 95)
    assert cfg.eval.fraction == 0.01 and cfg.eval.n_splits == 5


def test_layers_apply_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"pretrain": {"epochs": 7, "lr": 0.5}, "seed": 3}))
    cfg = load_config(path, ["pretrain.lr=3e-4", "pretrain.crop_scale=0.95"])
    assert cfg.pretrain.epochs == 7
    assert cfg.pretrain.lr == pytest.approx(3e-4)
    assert cfg.pretrain.crop_scale == pytest.approx(0.95)
    assert cfg.seed == 3


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("pretrain.epoch=3", "unknown config key 'pretrain.epoch'"),
        ("nonsense=1", "unknown config key 'nonsense'"),
        ("pretrain.epochs=three", "expected an integer"),
        ("pretrain.crop_scale=1.5", "crop_scale"),
        ("moco.queue_size=100", "divisible by the global batch"),
        ("data.uncertain=maybe", "uncertain-label policy"),
        ("data.target=Flu", "unknown observation"),
        ("pretrain.criterion=same_hospital", "same_hospital"),
        ("pretrain.init=imagenet", "pretrain.weights"),
        ("eval.split_by=hospital", "split_by"),
        ("eval.n_splits=0", "eval.n_splits must be at least 1"),
        ("eval.linear_epochs=0", "eval.linear_epochs must be at least 1"),
        ("eval.heldout_fraction=1.5", "eval.heldout_fraction must lie in (0, 1)"),
        ("eval.observations=[]", "eval.observations is empty"),
        ("pretrain.num_workers=-1", "pretrain.num_workers must be at least 0"),
        ("lr", "key=value"),
    ],
)
def test_bad_values_are_rejected_with_a_clear_message(override, fragment):
    with pytest.raises(MedaugError, match=None) as err:
        build_config(None, [override])
    assert fragment in str(err.value)


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "resnet18.pth"
    with pytest.raises(MedaugError, match="never downloaded"):
        build_config(None, ["pretrain.init=imagenet", f"pretrain.weights={missing}"])


def test_none_and_lists_parse():
    assert parse_override("pretrain.crop_scale=none") == (["pretrain", "crop_scale"], None)
    cfg = build_config(None, ["pretrain.lr_milestones=[3, 4]", "eval.study_level=max"])
    assert cfg.pretrain.lr_milestones == [3, 4]
    assert cfg.eval.study_level == "max"


def test_round_trip_through_yaml(tmp_path):
    cfg = build_config(None, ["pretrain.epochs=2", "data.column_map={path: file}"])
    path = write_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(path)
    assert config_to_dict(again) == config_to_dict(cfg)
    flat = flatten(config_to_dict(cfg))
    assert flat["pretrain.epochs"] == 2
    assert flat["data.column_map"] == {"path": "file"}


def test_a_warm_up_as_long_as_the_run_is_refused_before_any_work():
    with pytest.raises(MedaugError, match="warmup_epochs must lie in"):
        build_config(None, ["pretrain.epochs=3", "pretrain.warmup_epochs=3"])
    assert build_config(None, ["pretrain.epochs=3", "pretrain.warmup_epochs=2"]).pretrain.warmup_epochs == 2
