"""Fixtures of the engine tests: one small phantom per session and tiny pretraining configs."""

from __future__ import annotations

import pytest

from medaug.config import Config, build_config


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """The small models of these tests run on one thread (``one_thread``)."""


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    """30 phantom patients at 32 px (about 140 images), generated once per session."""
    from medaug.data.phantom import make_phantom

    out = tmp_path_factory.mktemp("engine_phantom")
    make_phantom(out, 30, image_size=32, seed=0, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One image cache shared by every run of the session."""
    return tmp_path_factory.mktemp("engine_cache")


@pytest.fixture(scope="session")
def tiny_config(phantom_dir, cache_dir):
    """``tiny_config(*overrides)``: ResNet-18, 32 px, batch 8, 2 epochs of 2 steps (MoCo: K = 64,
    two BN groups)."""

    def make(*overrides: str) -> Config:
        base = {
            "data": {
                "csv": str(phantom_dir / "train.csv"),
                "image_size": 32,
                "cache_dir": str(cache_dir),
                "num_loader_workers": 1,
            },
            "pretrain": {
                "arch": "resnet18",
                "batch_size": 8,
                "epochs": 2,
                "max_steps_per_epoch": 2,
                "knn_bank": 100,
                "knn_queries": 100,
                "knn_k": 5,
            },
        }
        methods = [o.split("=", 1)[1] for o in overrides if o.startswith("pretrain.method=")]
        if not methods or methods[-1] == "moco":  # MoCo's own section, for MoCo runs only
            base["moco"] = {"queue_size": 64, "bn_groups": 2}
        return build_config(base, list(overrides))

    return make
