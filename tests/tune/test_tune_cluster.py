"""The cluster launcher config passes Ray's own validation (no cloud calls)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster" / "cluster.yaml"


def _validate(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_validates(config):
    prepared = _validate(config)
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    workers = [t for name, t in types.items() if name != prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # trials never land on the head
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers)
    head_commands = " ".join(prepared["head_start_ray_commands"])
    assert "mlflow server --backend-store-uri sqlite:///" in head_commands
    assert "--host 0.0.0.0" in head_commands
    assert "ray start --head" in head_commands
    assert prepared["docker"]["image"].endswith("medaug:cuda")
    assert "~/medaug" in prepared["file_mounts"]
    assert any("/mnt/medaug" in opt for opt in prepared["docker"]["run_options"])


def test_validation_rejects_a_broken_config(config):
    from jsonschema import ValidationError

    broken = copy.deepcopy(config)
    broken["not_a_field"] = 1
    with pytest.raises(ValidationError):
        _validate(broken)
    broken = copy.deepcopy(config)
    broken["head_node_type"] = "missing"
    with pytest.raises(ValueError):
        _validate(broken)


def test_documented_submit_command_matches_the_entry_point(config):
    text = CLUSTER.read_text()
    assert "ray submit cluster/cluster.yaml sweeps/sweep.py --" in text
    assert (CLUSTER.parents[1] / "sweeps" / "sweep.py").exists()
