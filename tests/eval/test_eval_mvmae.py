"""The multi-view MAE through evaluation: each image's view code reaches the encoder in
feature extraction, end-to-end fine-tuning and the kNN monitor; the linear probe and the
fine-tune of an MVMAE checkpoint; the baselines of its architecture."""

import copy
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from medaug.cli import main
from medaug.config import build_config
from medaug.data.augment import MEAN, STD, eval_transform
from medaug.data.phantom import make_phantom
from medaug.data.schema import label_values
from medaug.engine.data import partitions_for, prepare_data
from medaug.engine.pretrain import pretrain
from medaug.errors import MedaugError
from medaug.eval.evaluate import eval_backbone, evaluate
from medaug.eval.features import cached_features, extract_features, module_hash
from medaug.eval.finetune import FinetuneData, FinetuneSettings, finetune
from medaug.eval.monitor import KnnMonitor
from medaug.models.backbones import build_backbone
from medaug.mvmae.method import MvmaeEvalBackbone, MvmaeMethod

# A two-layer ViT 64 wide on 8 px patches of the 32 px phantom.
MVMAE = {"vit": "vit_nano", "patch_size": 8, "mask_ratio": 0.75, "decoder_dim": 64,
         "decoder_depth": 1, "decoder_heads": 2}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("mvmae_phantom")
    make_phantom(out / "data", 30, 32, seed=0, workers=1, progress=False)
    return out


def _cfg(phantom, method="mvmae", pretrain_settings=None, **eval_settings):
    torch.set_num_threads(1)  # the machine is shared
    ev = {"fraction": 0.2, "n_splits": 2, "linear_epochs": 3, "linear_lr": 1e-3,
          "bootstrap": 0, "roc_plot": False, "e2e_epochs": 1, "e2e_lr": 1e-4,
          "e2e_batch_size": 8, "e2e_ray": False}
    ev.update(eval_settings)
    raw = {
        "data": {"dataset": "chexpert", "csv": str(phantom / "data" / "train.csv"),
                 "image_size": 32, "cache_dir": str(phantom / "cache"),
                 "num_loader_workers": 1},
        "pretrain": {"method": method, "criterion": "patient_same_study_distinct_lat",
                     "batch_size": 8, "epochs": 2, "max_steps_per_epoch": 2,
                     "knn_bank": 100, "knn_queries": 100, "knn_k": 5,
                     **(pretrain_settings or {})},
        "eval": ev,
    }
    if method == "mvmae":
        raw["mvmae"] = dict(MVMAE)
    return build_config(raw)


@pytest.fixture(scope="module")
def checkpoint(phantom):
    """A tiny MVMAE pretrained on the phantom (two epochs of two steps)."""
    out = phantom / "pretrain"
    pretrain(_cfg(phantom), out, progress=False, monitor=KnnMonitor)
    return out


# ---------------------------------------------------------------------------------------------
# View codes reach the encoder


class ViewRecorder(nn.Module):
    """A backbone that takes view codes and logs, for every image it sees, the image's grey
    level (its identity, below) and the view code it came with.  Features: the grey level
    and the code, through a linear layer so that it can be fine-tuned."""

    takes_view = True
    log: list = []  # a class attribute: fine-tuning's deep copy writes to the same log

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 4)

    def forward(self, x, view=None):
        grey = x[:, 0].mean(dim=(1, 2))  # N (normalised)
        ViewRecorder.log.append((grey.detach().clone(), view.detach().clone()))
        return self.linear(torch.stack([grey, view.float()], 1))  # N x 4


def _recorded_rows_and_views(pixel_of_row):
    """(row, view code) of every image the recorder saw; images are flat, one grey level
    per row."""
    row_of_pixel = {int(p): r for r, p in enumerate(pixel_of_row)}
    grey = torch.cat([g for g, _ in ViewRecorder.log]).double()
    pixels = torch.round((grey * STD + MEAN) * 255).long().tolist()
    views = torch.cat([v for _, v in ViewRecorder.log]).tolist()
    return [row_of_pixel[p] for p in pixels], views


def _flat_images(n):
    """n flat 32 px images, image r of grey level 8 r (which identifies it), and random view
    codes."""
    pixel = np.arange(n) * 8
    images = np.repeat(pixel.astype(np.uint8)[:, None, None], 32 * 32).reshape(n, 32, 32)
    views = np.random.default_rng(0).integers(0, 3, size=n)
    return images, views, pixel


def test_features_get_each_images_view_code():
    images, views, pixel = _flat_images(30)
    rows = np.array([7, 2, 2, 15, 0, 11, 3, 29])  # unsorted, a repeat: batches are re-sorted
    ViewRecorder.log = []
    feats = extract_features(ViewRecorder(), images, rows, 32, batch_size=3, device="cpu",
                             progress=False, views=views)
    seen_rows, seen_views = _recorded_rows_and_views(pixel)
    assert sorted(seen_rows) == sorted(rows.tolist())
    assert seen_views == views[seen_rows].tolist()
    assert feats.shape == (len(rows), 4)
    with pytest.raises(ValueError, match="takes each image's view code"):
        extract_features(ViewRecorder(), images, rows, 32, device="cpu", progress=False)


def test_mvmae_features_equal_a_per_image_forward_with_its_view(checkpoint, phantom):
    from medaug.engine.checkpoint import load_backbone

    backbone, _ = load_backbone(checkpoint)
    data = prepare_data(_cfg(phantom), phantom, progress=False)
    rows = np.array([40, 3, 17, 3, 88, 61, 5])
    feats = extract_features(backbone, data.cache, rows, 32, batch_size=3, device="cpu",
                             progress=False, views=data.view)
    with torch.no_grad():
        ref = np.stack([
            backbone(eval_transform(torch.from_numpy(data.cache[[r]]), 32),
                     torch.tensor([int(data.view[r])]))[0].numpy() for r in rows
        ])  # one image at a time, with its own view embedding
        blind = backbone(eval_transform(torch.from_numpy(data.cache[rows]), 32)).numpy()
    np.testing.assert_allclose(feats, ref, atol=1e-5, rtol=1e-4)
    assert not np.allclose(feats, blind, atol=1e-4)  # the view embedding matters


def test_feature_cache_key_holds_the_view_codes(tmp_path):
    images, views, _ = _flat_images(30)
    rows = np.arange(10)
    a = cached_features(ViewRecorder(), images, rows, 32, tmp_path, encoder_hash="e",
                        progress=False, views=views)
    other = views.copy()
    other[rows[0]] = (views[rows[0]] + 1) % 3
    b = cached_features(ViewRecorder(), images, rows, 32, tmp_path, encoder_hash="e",
                        progress=False, views=other)
    assert len(list(tmp_path.glob("features-*.npy"))) == 2
    assert not np.array_equal(a, b)
    # An encoder that reads no view codes keeps its key whatever views are given.
    torch.manual_seed(0)
    resnet, _ = build_backbone("resnet18", "random")
    cached_features(resnet, images, rows, 32, tmp_path / "r", progress=False)
    cached_features(resnet, images, rows, 32, tmp_path / "r", progress=False, views=views)
    assert len(list((tmp_path / "r").glob("features-*.npy"))) == 1


def test_finetuning_gets_each_images_view_code():
    images, views, pixel = _flat_images(30)
    labels = np.tile([[0.0], [1.0]], (15, 1)).astype(np.float32)
    mask = np.ones_like(labels, bool)
    tr, se, te = np.arange(12), np.arange(12, 20), np.arange(20, 30)
    data = FinetuneData(images, tr, labels[tr], mask[tr], se, labels[se], mask[se], te,
                        views=views)
    settings = FinetuneSettings(out_size=32, lr=1e-2, batch_size=4, epochs=2, seed=0,
                                rotation=0.0)
    ViewRecorder.log = []
    out = finetune(ViewRecorder(), 4, data, settings, device="cpu", progress=False)
    seen_rows, seen_views = _recorded_rows_and_views(pixel)
    assert set(seen_rows) == set(range(30))  # training, selection and test images
    assert seen_views == views[seen_rows].tolist()
    assert out["test_scores"].shape == (10, 1)


def test_knn_monitor_gets_each_images_view_code(phantom):
    cfg = _cfg(phantom, pretrain_settings={"knn_bank": 40, "knn_queries": 20})
    data = prepare_data(cfg, phantom, progress=False)
    monitor = KnnMonitor(data, cfg, torch.device("cpu"), partitions_for(data.table, cfg))
    ViewRecorder.log = []
    assert 0.0 <= monitor(ViewRecorder()) <= 1.0
    # Bank then queries, each batch read in sorted row order.
    size = cfg.eval.feature_batch_size
    expected = [int(data.view[r]) for rows in (monitor.bank_rows, monitor.query_rows)
                for start in range(0, len(rows), size) for r in np.sort(rows[start:start + size])]
    assert torch.cat([v for _, v in ViewRecorder.log]).tolist() == expected
    assert len(set(expected)) > 1  # frontal and lateral films both


# ---------------------------------------------------------------------------------------------
# The evaluation of an MVMAE checkpoint


def _check_against_sklearn(cfg, out_dir, res, kind):
    """Per-split AUCs equal sklearn's on the saved test scores (study level: the mean of a
    study's image scores, the study positive when any usable image label is)."""
    import pandas as pd

    table = prepare_data(cfg, out_dir, progress=False).table
    for row in res[kind]["Pleural Effusion"]["per_split"]:
        i = row["split"]
        saved = np.load(out_dir / "scores" / ("linear.npz" if kind == "linear"
                                              else f"e2e_split{i}.npz"))
        scores = (saved["scores"][i] if kind == "linear" else saved["scores"])[:, 0]
        y, m = label_values(table.iloc[saved["rows"]], "Pleural Effusion", cfg.data.uncertain)
        df = pd.DataFrame({"study": table["study_id"].to_numpy()[saved["rows"]],
                           "y": np.where(m, y, np.nan), "s": scores})
        grouped = df.groupby("study", sort=False)
        yy, ss = grouped["y"].max(), grouped["s"].mean()
        keep = yy.notna().to_numpy()
        assert row["auc"] == pytest.approx(roc_auc_score(yy[keep], ss[keep]), abs=1e-12)


def test_linear_probe_and_finetune_of_an_mvmae_checkpoint(checkpoint, phantom, tmp_path):
    cfg = _cfg(phantom, study_level="mean", e2e=True, n_splits=2)
    res = evaluate(cfg, checkpoint, tmp_path, progress=False)
    assert res["encoder"]["source"] == "checkpoint" and res["encoder"]["method"] == "mvmae"
    assert res["level"] == "study-mean"
    assert [r["split"] for r in res["linear"]["Pleural Effusion"]["per_split"]] == [0, 1]
    _check_against_sklearn(cfg, tmp_path, res, "linear")
    _check_against_sklearn(cfg, tmp_path, res, "e2e")
    assert res["pretraining"]["selected_by"] == "kNN monitor"


@pytest.mark.slow  # starting Ray and its worker takes about a minute and a half here
def test_ray_train_finetune_of_an_mvmae_checkpoint_equals_in_process(checkpoint, phantom,
                                                                     tmp_path):
    import ray

    from medaug.tune.finetune_trainer import run_finetune_ray

    cfg = _cfg(phantom, linear=False, e2e=True, n_splits=1, e2e_ray=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = evaluate(cfg, checkpoint, tmp_path / "ray", progress=False,
                       finetune_runner=run_finetune_ray)
    finally:
        ray.shutdown()
    local = evaluate(_cfg(phantom, linear=False, e2e=True, n_splits=1), checkpoint,
                     tmp_path / "local", progress=False)
    a = np.load(tmp_path / "ray" / "scores" / "e2e_split0.npz")["scores"]
    b = np.load(tmp_path / "local" / "scores" / "e2e_split0.npz")["scores"]
    np.testing.assert_allclose(a, b, atol=1e-5)  # the workers gave the encoder its views too
    assert res["e2e"]["Pleural Effusion"]["mean"] == pytest.approx(
        local["e2e"]["Pleural Effusion"]["mean"], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Baselines of the MVMAE's architecture


def test_random_baseline_is_the_mvmaes_vit_seeded(phantom):
    cfg = _cfg(phantom)
    backbone, dim, info = eval_backbone(cfg, None, "random")
    assert isinstance(backbone, MvmaeEvalBackbone) and dim == 64
    assert info["method"] == "mvmae" and info["module"] == "MvmaeEvalBackbone"
    torch.manual_seed(cfg.seed)
    reference = MvmaeMethod.backbone_from_config(cfg)
    assert module_hash(reference) == module_hash(backbone)
    assert module_hash(eval_backbone(cfg, None, "random")[0]) == module_hash(backbone)
    other = copy.deepcopy(cfg)
    other.seed = 1
    assert module_hash(eval_backbone(other, None, "random")[0]) != module_hash(backbone)


def test_imagenet_baseline_needs_a_torchvision_arch(phantom, tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    cfg = _cfg(phantom, pretrain_settings={"weights": str(weights)})
    with pytest.raises(MedaugError, match="method 'mvmae' does not use.*pretrain.method=moco"):
        eval_backbone(cfg, None, "imagenet")
    vit = _cfg(phantom, method="moco", pretrain_settings={"weights": str(weights),
                                                          "arch": "vit_tiny"})
    with pytest.raises(MedaugError, match="pretrain.arch must be one of resnet18, resnet50, "
                                          "densenet121, got 'vit_tiny'"):
        eval_backbone(vit, None, "imagenet")


def test_cli_evaluates_the_random_mvmae_baseline(phantom, tmp_path, capsys):
    sets = [f"data.csv={phantom / 'data' / 'train.csv'}", "data.image_size=32",
            f"data.cache_dir={phantom / 'cache'}", "eval.fraction=0.2", "eval.n_splits=2",
            "eval.linear_epochs=2", "eval.bootstrap=0", "eval.roc_plot=false",
            "pretrain.method=mvmae", *(f"mvmae.{k}={v}" for k, v in MVMAE.items())]
    args = ["evaluate", "--baseline", "random", "--output", str(tmp_path), "--quiet"]
    assert main([*args, *(x for s in sets for x in ("--set", s))]) == 0
    assert "linear probe - Pleural Effusion" in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["encoder"]["module"] == "MvmaeEvalBackbone"
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    args[2] = "imagenet"
    code = main([*args, *(x for s in [*sets, f"pretrain.weights={weights}"]
                          for x in ("--set", s))])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not use" in err
