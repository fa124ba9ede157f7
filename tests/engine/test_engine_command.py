"""``medaug pretrain`` on the command line (in-process, without Ray)."""

import json

import pytest
import yaml

from medaug.cli import main


@pytest.fixture
def config_file(tmp_path, phantom_dir, cache_dir):
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"csv": str(phantom_dir / "train.csv"), "image_size": 32,
                 "cache_dir": str(cache_dir), "num_loader_workers": 1},
        "moco": {"queue_size": 64},
        "pretrain": {"batch_size": 8, "epochs": 1, "max_steps_per_epoch": 1,
                     "knn_bank": 60, "knn_k": 5},
    }))
    return path


def test_pretrain_command_trains_and_prints_the_best(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["pretrain", "--config", str(config_file), "--output", str(out), "--no-ray",
                 "--set", "moco.negatives=reweighted"])
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    # Progress: one line per epoch with the loss, speed, kNN AUC and fallback counts.
    assert "epoch 1/1  loss " in captured.err and "img/s  knn_auc 0." in captured.err
    assert "fallback pairs 0" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert f"best epoch:      {summary['best_epoch']}" in printed
    assert f"{summary['best_knn_auc']:.4f}" in printed
    assert str(out / "checkpoints" / "best") in printed
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["moco"]["negatives"] == "reweighted"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "moco.negatives=hardest"], "unknown negative strategy 'hardest'"),
        (["--set", "pretrain.crop_scale=0"], "crop_scale"),
        (["--set", "moco.queue_size=20"], "divisible"),
        (["--set", "pretrain.colour=1"], "unknown config key 'pretrain.colour'"),
        (["--set", "data.csv=/missing.csv"], "does not exist"),
        (["--set", "pretrain.init=imagenet", "--set", "pretrain.weights=/no/such.pth"],
         "does not exist"),
    ],
)
def test_pretrain_command_rejects_bad_settings_in_one_line(
    config_file, tmp_path, capsys, args, message
):
    out = tmp_path / "run"
    code = main(["pretrain", "--config", str(config_file), "--output", str(out), "--no-ray",
                 "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.startswith("medaug pretrain: error:") and err.count("\n") == 1
    assert not (out / "checkpoints").exists()
