"""Pretraining on Ray Train: two CPU workers, checkpoints, and recovery from a crashed worker."""

import json
from pathlib import Path

import pytest
import torch

from medaug.config import build_config


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    from medaug.data.phantom import make_phantom

    out = tmp_path_factory.mktemp("ray_phantom")
    make_phantom(out, 30, image_size=32, seed=1, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """The driver's own work (cache, checks) runs on one thread (``one_thread``)."""


def _config(phantom_dir, tmp_path, *overrides):
    return build_config({
        "data": {"csv": str(phantom_dir / "train.csv"), "image_size": 32,
                 "cache_dir": str(tmp_path / "cache"), "num_loader_workers": 1},
        "moco": {"bn_groups": 2, "queue_size": 64},
        "pretrain": {"num_workers": 2, "batch_size": 4,
                     "epochs": 1, "max_steps_per_epoch": 2, "knn_bank": 60, "knn_k": 5,
                     "max_failures": 1},
    }, list(overrides))


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_two_ray_workers_train_and_checkpoint(ray_cluster, phantom_dir, tmp_path):
    from medaug.engine.checkpoint import load_state
    from medaug.tune.pretrain_trainer import run_pretrain_ray

    out = tmp_path / "run"
    summary = run_pretrain_ray(_config(phantom_dir, tmp_path), out, progress=False)

    assert summary["best_epoch"] == 1 and summary["latest_checkpoint"].endswith("epoch_0001")
    metrics = _lines(out / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1]
    # Two workers of 4 images each: a global batch of 8, so the queue pointer is at 2 x 8.
    state = load_state(out / "checkpoints" / "epoch_0001")
    assert int(state["extra"]["queue"]["ptr"]) == 16 and state["world_size"] == 2
    assert (state["extra"]["queue"]["view"][:16] >= 0).all() and (state["extra"]["queue"]["view"][16:] == -1).all()
    ray_copy = summary["ray_checkpoint"]
    assert ray_copy and (out / "ray").resolve() in Path(ray_copy).resolve().parents
    assert torch.equal(load_state(ray_copy)["extra"]["queue"]["keys"], state["extra"]["queue"]["keys"])
    events = _lines(out / "events.jsonl")
    assert events[0]["event"] == "start" and events[0]["world_size"] == 2


def test_local_mode_trains_in_this_process_like_the_plain_loop(phantom_dir, tmp_path,
                                                              monkeypatch):
    """num_workers=0: Ray Train's local mode runs the loop here (no worker process, no Ray
    started) and gives the same weights, queue and losses as the plain loop."""
    import ray

    import medaug.engine.pretrain as engine
    from medaug.engine.checkpoint import load_state
    from medaug.tune.pretrain_trainer import run_pretrain_ray

    cfg = _config(phantom_dir, tmp_path, "pretrain.num_workers=0", "pretrain.epochs=2")
    ray_out, plain_out = tmp_path / "local", tmp_path / "plain"
    calls = []
    plain_loop = engine.pretrain

    def spy(*args, **kwargs):  # a worker process would not see this patch
        calls.append(args[1])
        return plain_loop(*args, **kwargs)

    monkeypatch.setattr(engine, "pretrain", spy)
    was_up = ray.is_initialized()
    summary = run_pretrain_ray(cfg, ray_out, progress=False)
    assert ray.is_initialized() == was_up  # local mode neither starts nor stops Ray
    assert calls == [ray_out.resolve()]
    reported = []
    plain_loop(cfg, plain_out, lambda m, c: reported.append(m), progress=False)

    assert summary["ray_checkpoint"] is None and summary["best_epoch"] is not None
    assert [m["epoch"] for m in _lines(ray_out / "metrics.jsonl")] == [1, 2]
    start = _lines(ray_out / "events.jsonl")[0]
    assert start["event"] == "start" and start["world_size"] == 1
    local_state = load_state(ray_out / "checkpoints" / "epoch_0002")
    plain_state = load_state(plain_out / "checkpoints" / "epoch_0002")
    assert plain_state["model"].keys() == local_state["model"].keys()
    for name, value in plain_state["model"].items():  # both encoders and the heads
        assert torch.equal(local_state["model"][name], value), name
    assert torch.equal(local_state["extra"]["queue"]["keys"], plain_state["extra"]["queue"]["keys"])
    losses = [m["loss"] for m in _lines(ray_out / "metrics.jsonl")]
    assert losses == [m["loss"] for m in reported]


@pytest.mark.slow
def test_a_crashed_worker_restarts_from_the_checkpoint(
    ray_cluster, phantom_dir, tmp_path, monkeypatch
):
    from medaug.tune.pretrain_trainer import FAULT_EPOCH_ENV, FAULT_MARKER_ENV, run_pretrain_ray

    marker = tmp_path / "crashed"
    monkeypatch.setenv(FAULT_EPOCH_ENV, "2")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(marker))
    out = tmp_path / "run"
    summary = run_pretrain_ray(_config(phantom_dir, tmp_path, "pretrain.epochs=3"), out,
                               progress=False)

    assert marker.exists()  # the last worker did exit after epoch 2, once
    events = _lines(out / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds == ["start", "resume", "end"]
    assert events[1]["epoch"] >= 1  # continued from a checkpoint, not from scratch
    assert [m["epoch"] for m in _lines(out / "metrics.jsonl")] == [1, 2, 3]
    assert summary["latest_checkpoint"].endswith("epoch_0003")
