"""The multi-view MAE through the engine's loop: it trains, checkpoints, resumes exactly, and
its statistics reach every epoch's metrics."""

import json

import pytest
import torch

from medaug.engine.checkpoint import load_backbone, load_state
from medaug.engine.pretrain import pretrain
from medaug.eval.monitor import KnnMonitor
from medaug.mvmae.schedule import beta_at

# A two-layer ViT 64 wide on 8 px patches of the 32 px phantom (16 patches, 4 visible), the
# frontal and lateral films of one study as the two views.
MVMAE = (
    "pretrain.method=mvmae",
    "pretrain.criterion=patient_same_study_distinct_lat",
    "pretrain.optimizer=adamw",
    "pretrain.weight_decay=0.05",
    "pretrain.lr=1e-3",
    "pretrain.lr_schedule=cosine",
    "pretrain.grad_clip=1.0",
    "mvmae.vit=vit_nano",
    "mvmae.patch_size=8",
    "mvmae.mask_ratio=0.75",
    "mvmae.decoder_dim=64",
    "mvmae.decoder_depth=1",
    "mvmae.decoder_heads=2",
    "mvmae.beta_schedule=linear",
)


def _metrics(folder):
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


class _Stop(Exception):
    pass


def _stop_after_first_epoch(metrics, _checkpoint):
    if metrics["epoch"] == 1:
        raise _Stop


def test_mvmae_trains_checkpoints_and_resumes_exactly(tiny_config, tmp_path):
    """Two epochs straight == one epoch, a stop, then a fresh call resuming for the second:
    the same weights, optimiser state, losses and statistics.  (The cosine schedule and the
    beta ramp span the whole run, so the first part is the same two-epoch run, stopped.)"""
    straight = pretrain(tiny_config(*MVMAE), tmp_path / "a", progress=False, monitor=KnnMonitor)
    with pytest.raises(_Stop):
        pretrain(tiny_config(*MVMAE), tmp_path / "b", report=_stop_after_first_epoch,
                 progress=False, monitor=KnnMonitor)
    assert [m["epoch"] for m in _metrics(tmp_path / "b")] == [1]
    resumed = pretrain(tiny_config(*MVMAE), tmp_path / "b", progress=False, monitor=KnnMonitor)

    a = load_state(tmp_path / "a" / "checkpoints" / "epoch_0002")
    b = load_state(tmp_path / "b" / "checkpoints" / "epoch_0002")
    assert a["method"] == b["method"] == "mvmae"
    for part in ("model", "backbone"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(),
                      strict=True):
        for key in pa:
            assert torch.equal(torch.as_tensor(pa[key]), torch.as_tensor(pb[key]))
    # AdamW's groups: weight decay on the weight matrices only.
    assert [g["weight_decay"] for g in a["optimizer"]["param_groups"]] == [0.05, 0.0]
    stats = ("loss", "recon", "align", "align_cos", "recon_share", "align_share", "beta",
             "n_align_pairs", "n_single_views", "n_fallback_pairs", "knn_auc")
    for x, y in zip(straight["history"], resumed["history"], strict=True):
        assert {k: x[k] for k in stats} == {k: y[k] for k in stats}
    assert [json.loads(x)["event"] for x in (tmp_path / "b" / "events.jsonl").read_text().splitlines()
            ] == ["start", "resume", "end"]
    assert _metrics(tmp_path / "b") == resumed["history"]
    # The weights did move: resuming is not trivially exact.
    first = load_state(tmp_path / "b" / "checkpoints" / "epoch_0001")
    key = "encoder.vit.blocks.0.attn.qkv.weight"
    assert not torch.equal(first["model"][key], b["model"][key])
    # The evaluated backbone is the encoder, under the checkpoint's one key.
    backbone, _ = load_backbone(tmp_path / "a" / "checkpoints" / "epoch_0002")
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, a["model"][name]), name
    assert getattr(backbone, "takes_view", False)


def test_mvmae_statistics_reach_every_epochs_metrics(tiny_config, tmp_path):
    pretrain(tiny_config(*MVMAE, "pretrain.epochs=3"), tmp_path, progress=False,
             monitor=KnnMonitor)
    lines = _metrics(tmp_path)
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    batch, steps = 8, 2
    for m in lines:
        # beta is the linear ramp's value at the epoch (0, 1/2, 1 of beta_max = 2).
        assert m["beta"] == pytest.approx(beta_at(m["epoch"] - 1, 3, 2.0, "linear"))
        # Constant beta within an epoch: the averaged loss is the averaged terms' sum.
        assert m["loss"] == pytest.approx(m["recon"] + m["beta"] * m["align"], rel=1e-6)
        assert m["recon_share"] + m["align_share"] == pytest.approx(1.0)
        assert (m["align_share"] > 0) == (m["beta"] > 0)
        # Counts summed over the epoch: every sample is a pair or a single view, and with
        # distinct-laterality pairs only an anchor without a partner (paired with itself)
        # is a single view.
        assert isinstance(m["n_align_pairs"], int) and isinstance(m["n_single_views"], int)
        assert m["n_align_pairs"] + m["n_single_views"] == batch * steps
        assert m["n_single_views"] == m["n_fallback_pairs"]
        assert m["n_align_pairs"] > 0
        assert 0.0 <= m["knn_auc"] <= 1.0


def test_moco_with_a_vit_backbone_trains_and_is_evaluated(tiny_config, tmp_path):
    """The MoCo baseline of the MAE's comparison: MoCo v2 on timm's ViT-Ti/16 (two 16 px
    patches a side at 32 px), built for the training images' size."""
    from timm.models.vision_transformer import VisionTransformer

    summary = pretrain(tiny_config("pretrain.arch=vit_tiny"), tmp_path, progress=False,
                       monitor=KnnMonitor)
    assert all(m["loss"] > 0 for m in summary["history"])
    state = load_state(tmp_path / "checkpoints" / "epoch_0002")
    first = load_state(tmp_path / "checkpoints" / "epoch_0001")
    key = "encoder_q.backbone.blocks.0.attn.qkv.weight"
    assert not torch.equal(first["model"][key], state["model"][key])
    backbone, _ = load_backbone(tmp_path / "checkpoints" / "epoch_0002")
    assert isinstance(backbone, VisionTransformer)
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, state["model"][f"encoder_q.backbone.{name}"]), name
    with torch.no_grad():
        assert backbone(torch.zeros(2, 3, 32, 32)).shape == (2, 192)
