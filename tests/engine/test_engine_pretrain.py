"""The pretraining loop on a tiny phantom: outputs, exact resume, the queue, the kNN monitor."""

import json
import math

import numpy as np
import pytest
import torch

from medaug.config import build_config
from medaug.engine.checkpoint import best_checkpoint, load_backbone, load_state
from medaug.engine.data import pair_index, prepare_data
from medaug.engine.pretrain import check_pretrain, pretrain
from medaug.errors import MedaugError
from medaug.eval.monitor import KnnMonitor
from medaug.methods import get_method


def tiny_config_used(saved: dict):
    """The config a checkpoint was trained with."""
    return build_config(saved)


@pytest.fixture(scope="module")
def tiny_run(tiny_config, tmp_path_factory):
    """One 2-epoch run shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("tiny_run")
    calls = []
    summary = pretrain(tiny_config(), out, lambda m, d: calls.append((m, d)), progress=False, monitor=KnnMonitor)
    return out, summary, calls


def test_tiny_run_writes_checkpoints_metrics_and_reports(tiny_run):
    tmp_path, summary, calls = tiny_run
    assert [m["epoch"] for m, _ in calls] == [1, 2]
    assert [d.name for _, d in calls] == ["epoch_0001", "epoch_0002"]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    for m in lines:
        assert math.isfinite(m["loss"]) and m["loss"] > 0
        assert 0.0 <= m["knn_auc"] <= 1.0
        assert m["images_per_s"] > 0
        assert m["lr"] == pytest.approx(1e-4)
        for key in ("n_fallback_pairs", "n_neg_fallback", "n_neg_short", "n_neg_own",
                    "n_neg_own_queries"):
            assert isinstance(m[key], int) and m[key] >= 0
    best = max(lines, key=lambda m: m["knn_auc"])
    assert summary["best_epoch"] == best["epoch"]
    assert summary["best_knn_auc"] == pytest.approx(best["knn_auc"])
    assert json.loads((tmp_path / "summary.json").read_text())["best_epoch"] == best["epoch"]
    assert json.loads((tmp_path / "best.json").read_text())["epoch"] == best["epoch"]
    assert best_checkpoint(tmp_path) == tmp_path / "checkpoints" / "best"
    assert (tmp_path / "config.yaml").exists()
    assert load_state(tmp_path / "checkpoints" / "best")["epoch"] == best["epoch"]

    backbone, saved = load_backbone(tmp_path)
    assert saved["moco"]["queue_size"] == 64
    assert not backbone.training
    # A plain backbone (no batch-split BN) computing what the saved model's query backbone
    # computes in eval mode.
    from medaug.moco.bn import SplitBatchNorm2d
    from medaug.moco.model import MoCo

    assert not any(isinstance(m, SplitBatchNorm2d) for m in backbone.modules())
    moco = MoCo.from_config(tiny_config_used(saved))
    moco.load_state_dict(load_state(tmp_path / "checkpoints" / "best")["model"])
    moco.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        feats = backbone(x)
        torch.testing.assert_close(feats, moco.backbone()(x))
    assert feats.shape == (4, 512)


def test_resume_continues_exactly(tiny_config, tmp_path):
    """Two epochs straight == one epoch, then a fresh call resuming for the second."""
    overrides = ("moco.negatives=synthetic", "pretrain.crop_scale=0.8")
    straight = pretrain(tiny_config(*overrides), tmp_path / "a", progress=False, monitor=KnnMonitor)
    pretrain(tiny_config(*overrides, "pretrain.epochs=1"), tmp_path / "b", progress=False, monitor=KnnMonitor)
    resumed = pretrain(tiny_config(*overrides), tmp_path / "b", progress=False, monitor=KnnMonitor)

    a = load_state(tmp_path / "a" / "checkpoints" / "epoch_0002")
    b = load_state(tmp_path / "b" / "checkpoints" / "epoch_0002")
    for part in ("model", "backbone"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    for key in a["extra"]["queue"]:
        assert torch.equal(a["extra"]["queue"][key], b["extra"]["queue"][key]), f"queue.{key}"
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in pa:
            assert torch.equal(torch.as_tensor(pa[key]), torch.as_tensor(pb[key]))
    assert [m["loss"] for m in straight["history"]] == [m["loss"] for m in resumed["history"]]
    events = [json.loads(x) for x in (tmp_path / "b" / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "end", "resume", "end"]
    assert events[2]["epoch"] == 1
    # The weights did move: resuming is not trivially exact.
    first = load_state(tmp_path / "b" / "checkpoints" / "epoch_0001")
    assert not torch.equal(first["model"]["encoder_q.head.0.weight"],
                           b["model"]["encoder_q.head.0.weight"])


def test_resume_false_starts_over(tiny_config, tmp_path):
    cfg = tiny_config("pretrain.epochs=1", "pretrain.knn_every=0")
    pretrain(cfg, tmp_path, progress=False, monitor=KnnMonitor)
    summary = pretrain(cfg, tmp_path, resume=False, progress=False, monitor=KnnMonitor)
    events = [json.loads(x)["event"] for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events == ["start", "end"]
    # Without a monitor the last checkpoint is the best one.
    assert summary["best_knn_auc"] is None
    assert summary["best_checkpoint"].endswith("epoch_0001")
    assert best_checkpoint(tmp_path).name == "epoch_0001"


def test_fallback_pairs_are_counted(tiny_config, tmp_path):
    """With every anchor used once, the count equals a brute-force one from the metadata."""
    cfg0 = tiny_config("pretrain.criterion=patient_distinct_studies")
    data = prepare_data(cfg0, tmp_path, progress=False)
    n = len(data.train)
    batch = next(b for b in range(8, n + 1) if n % b == 0)
    cfg = tiny_config(
        "pretrain.criterion=patient_distinct_studies", f"pretrain.batch_size={batch}",
        "moco.bn_groups=1", f"moco.queue_size={batch * 2}", "pretrain.epochs=1",
        "pretrain.max_steps_per_epoch=null", "pretrain.knn_every=0",
    )
    summary = pretrain(cfg, tmp_path, progress=False, monitor=KnnMonitor)
    table = data.table.iloc[data.train]
    studies = table.groupby("patient_id")["study_id"].nunique()
    expected = int((table["patient_id"].map(studies) == 1).sum())  # no other study to pair
    assert expected > 0
    assert summary["history"][0]["n_fallback_pairs"] == expected


def test_knn_monitor_matches_a_brute_force_knn(tiny_run, tiny_config):
    """The monitor's AUC of epoch 2, recomputed with sklearn from the epoch-2 weights."""
    from sklearn.metrics import roc_auc_score

    from medaug.data.augment import eval_transform

    tmp_path, summary, _ = tiny_run
    cfg = tiny_config()
    data = prepare_data(cfg, tmp_path, progress=False)
    monitor = KnnMonitor(data, cfg, torch.device("cpu"))
    assert monitor.problem is None
    assert set(monitor.query_rows) <= set(data.valid)
    assert set(monitor.bank_rows) <= set(data.train)
    backbone, _ = load_backbone(tmp_path / "checkpoints" / "epoch_0002")

    def feats(rows):
        x = eval_transform(torch.from_numpy(np.asarray(data.cache.images[rows])), 32)
        with torch.no_grad():
            f = backbone(x).double()
        return torch.nn.functional.normalize(f, dim=1).numpy()

    bank, query = feats(monitor.bank_rows), feats(monitor.query_rows)
    sims = query @ bank.T  # Q x B cosine similarities
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, : cfg.pretrain.knn_k]
    scores = monitor.bank_labels[nearest].mean(axis=1)
    expected = roc_auc_score(monitor.query_labels, scores)
    assert summary["history"][1]["knn_auc"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "override, message",
    [
        ("moco.negatives=hardest", "negative strategy"),
        ("pretrain.criterion=same_hospital", "criterion"),
        ("pretrain.crop_scale=1.5", "crop_scale"),
        ("moco.queue_size=60", "divisible by the global batch"),
        ("pretrain.init=imagenet", "weights"),
        ("pretrain.optimizer=lamb", "optimizer"),
        ("pretrain.lr_schedule=warmup", "lr schedule"),
        ("pretrain.arch=vgg11", "backbone"),
        ("moco.bn_groups=3", "bn_groups"),
        ("data.csv=/nonexistent/train.csv", "does not exist"),
    ],
)
def test_bad_configs_fail_before_training(tiny_config, tmp_path, override, message):
    with pytest.raises(MedaugError, match=message):
        cfg = tiny_config(override)
        check_pretrain(cfg)
        pretrain(cfg, tmp_path / "run", progress=False, monitor=KnnMonitor)
    assert not (tmp_path / "run").exists()


def test_too_few_anchors_for_a_batch_is_a_user_error(tiny_config, tmp_path):
    with pytest.raises(MedaugError, match="fewer than one global batch"):
        pretrain(tiny_config("pretrain.batch_size=512", "moco.queue_size=1024"), tmp_path,
                 progress=False, monitor=KnnMonitor)


def test_pair_index_covers_the_training_rows(tiny_config, tmp_path):
    cfg = tiny_config("pretrain.criterion=patient_same_study")
    data = prepare_data(cfg, tmp_path, progress=False)
    assert prepare_data(cfg, tmp_path, progress=False) is data
    index = pair_index(data, cfg)
    rows = data.train[index.anchors]
    assert len(rows) == len(data.train)
    for i in range(len(index)):
        partners = data.train[index.partners(i)]
        assert (data.study[partners] == data.study[rows[i]]).all()
    # Codes agree with the table's identifiers.
    t = data.table
    for codes, column in ((data.patient, "patient_id"), (data.study, "study_id")):
        for code in np.unique(codes):
            assert t.loc[codes == code, column].nunique() == 1
    assert len(np.unique(data.patient)) == t["patient_id"].nunique()
    assert data.cache.images.shape == (len(t), 32, 32)


def test_anchor_restriction_limits_the_anchors_drawn(tiny_config, tmp_path, monkeypatch):
    """With pretrain.anchors_with, every query of every step is a kept anchor."""
    cfg = tiny_config(
        "pretrain.criterion=patient_same_study_same_lat",
        "pretrain.size_match=patient_same_study_distinct_lat",
        "pretrain.anchors_with=patient_same_study_distinct_lat",
        "pretrain.epochs=1",
        "pretrain.max_steps_per_epoch=null",
        "pretrain.knn_every=0",
    )
    seen: list[np.ndarray] = []
    moco = get_method("moco")
    real_step = moco.step

    def recording_step(self, net, rows_a, rows_b):
        seen.append(np.asarray(rows_a).copy())
        return real_step(self, net, rows_a, rows_b)

    monkeypatch.setattr(moco, "step", recording_step)
    pretrain(cfg, tmp_path / "run", progress=False, monitor=KnnMonitor)
    table = prepare_data(cfg, tmp_path / "run", progress=False).table
    both = table.groupby("study_id")["view"].agg(lambda v: {"frontal", "lateral"} <= set(v))
    kept = set(np.flatnonzero(table["study_id"].map(both).to_numpy() & (table["split"] == "train")))
    queries = np.concatenate(seen)
    # One epoch draws nearly every anchor once: without the restriction, images of
    # single-view studies would be among them.
    assert len(seen) >= 2 and len(queries) > len(kept) - cfg.pretrain.batch_size * 2
    assert set(queries.tolist()) <= kept and len(set(queries.tolist())) == len(queries)


def test_declarative_criterion_with_one_partner_per_anchor(tiny_config, tmp_path, monkeypatch):
    """max_partners = 1 (distinct images only): each anchor pairs with one other image of its
    patient, the same one in every epoch."""
    cfg = tiny_config(
        "pretrain.criterion={preset: patient_all_studies, max_partners: 1}",
        "pretrain.distinct_only=true",
        "pretrain.max_steps_per_epoch=5",
        "pretrain.knn_every=0",
    )
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    moco = get_method("moco")
    real_step = moco.step

    def recording_step(self, net, rows_a, rows_b):
        pairs.append((np.asarray(rows_a).copy(), np.asarray(rows_b).copy()))
        return real_step(self, net, rows_a, rows_b)

    monkeypatch.setattr(moco, "step", recording_step)
    pretrain(cfg, tmp_path / "run", progress=False, monitor=KnnMonitor)
    table = prepare_data(cfg, tmp_path / "run", progress=False).table
    partner: dict[int, int] = {}
    for rows_q, rows_k in pairs:
        for q, k in zip(rows_q.tolist(), rows_k.tolist()):
            assert q != k and table.at[q, "patient_id"] == table.at[k, "patient_id"]
            assert partner.setdefault(q, k) == k
    assert len(pairs) >= 4 and len(partner) < sum(len(q) for q, _ in pairs)  # anchors recur


def test_resume_restores_the_metrics_line_a_kill_cut_off(tiny_config, tmp_path):
    """Killed after an epoch's checkpoint but before its metrics line: resuming restores that
    line from the checkpoint, so the curve has every epoch once."""
    cfg1 = tiny_config("pretrain.epochs=1", "pretrain.knn_every=0")
    pretrain(cfg1, tmp_path, progress=False)
    (tmp_path / "metrics.jsonl").write_text("")  # the append never happened
    summary = pretrain(tiny_config("pretrain.knn_every=0"), tmp_path, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert [m["epoch"] for m in summary["history"]] == [1, 2]
    assert lines[0]["loss"] == load_state(tmp_path / "checkpoints" / "epoch_0001")["metrics"]["loss"]
