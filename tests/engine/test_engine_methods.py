"""MoCo behind the method seam: one step, what the queue receives, the evaluated backbone."""

import math

import numpy as np
import pytest
import torch

from medaug.engine.checkpoint import load_backbone, load_state
from medaug.engine.data import prepare_data
from medaug.engine.pretrain import pretrain
from medaug.errors import MedaugError
from medaug.eval.monitor import KnnMonitor
from medaug.methods import _METHODS, Method, get_method, register_method
from medaug.models.backbones import build_backbone


def test_queue_holds_the_key_images_metadata(tiny_config, tmp_path):
    cfg = tiny_config("moco.negatives=same_lat_only")
    data = prepare_data(cfg, tmp_path, progress=False)
    # Anchors paired with images of another patient and, where possible, another laterality,
    # so the anchor's and the partner's metadata differ in every field.
    rows_q = data.train[:8]
    others = [r for r in data.train if data.patient[r] not in set(data.patient[rows_q])]
    rows_k = np.array(sorted(others, key=lambda r: data.view[r] == data.view[rows_q[0]])[:8])
    gen = torch.Generator().manual_seed(0)
    method = get_method("moco")(cfg, data, torch.device("cpu"), gen)
    queue = method.queue
    loss, stats = method.step(method.module, rows_q, rows_k)
    loss.backward()
    assert int(queue.ptr) == 0  # the loss saw the queue as it was; keys join after the step
    method.after_step()

    assert math.isfinite(float(loss)) and set(stats) >= {"n_neg_fallback", "n_neg_short"}
    assert int(queue.ptr) == 8
    assert queue.view[:8].tolist() == data.view[rows_k].tolist()
    assert queue.patient[:8].tolist() == data.patient[rows_k].tolist()
    assert queue.study[:8].tolist() == data.study[rows_k].tolist()
    assert queue.image[:8].tolist() == rows_k.tolist()
    assert (queue.patient[:8] != torch.from_numpy(data.patient[rows_q])).all()
    assert (queue.view[8:] == -1).all()
    torch.testing.assert_close(queue.keys[:8].norm(dim=1), torch.ones(8))


def test_keys_of_the_anchor_image_are_counted_and_left_out(tiny_config, tmp_path):
    """A step whose anchors' own keys sit in the queue: each is counted, and it changes the
    loss only when moco.keep_own_image_negatives keeps it."""
    losses, counts = {}, {}
    for keep in (False, True):
        cfg = tiny_config(f"moco.keep_own_image_negatives={str(keep).lower()}")
        data = prepare_data(cfg, tmp_path, progress=False)
        torch.manual_seed(0)
        method = get_method("moco")(cfg, data, torch.device("cpu"), torch.Generator().manual_seed(0))
        first, second = data.train[:8], data.train[8:16]
        method.step(method.module, first, second)
        method.after_step()  # the queue now holds one key of each image of `second`
        loss, stats = method.step(method.module, second, first)  # ... this step's anchors
        losses[keep] = float(loss.detach())
        counts[keep] = (stats["n_neg_own"], stats["n_neg_own_queries"])
    assert counts[False] == counts[True] == (8, 8)
    assert losses[False] != losses[True]


def test_hard_negatives_by_sex_group_queries_and_keys_by_sex(tiny_config, tmp_path):
    """moco.hard_negatives_by=sex: the queue keeps the key images' sex beside their
    laterality, and a query whose sex has no key in the queue falls back (same_lat_only)."""
    cfg = tiny_config("moco.hard_negatives_by=sex", "moco.negatives=same_lat_only")
    data = prepare_data(cfg, tmp_path, progress=False)
    sex = data.table["sex"].to_numpy()
    males = [r for r in data.train if sex[r] == "Male"]
    females = [r for r in data.train if sex[r] == "Female"]
    assert len(males) >= 12 and len(females) >= 4
    method = get_method("moco")(cfg, data, torch.device("cpu"), torch.Generator().manual_seed(0))
    queue = method.queue

    def step(rows_a, rows_b):
        loss, stats = method.step(method.module, rows_a, rows_b)
        method.after_step()
        return loss, stats

    keys_rows = np.array(males[:8])
    step(keys_rows, keys_rows)  # only the keys (partners) enter the queue
    assert queue.group[:8].tolist() == [0] * 8  # Male (the laterality stays in view)
    assert queue.view[:8].tolist() == data.view[keys_rows].tolist()
    # Four male and four female queries, none of an image in the queue: the female ones
    # have no key of their sex.
    _, stats = step(np.array(males[8:12] + females[:4]), np.array(males[:8]))
    assert stats["n_neg_fallback"] == 4 and stats["n_neg_own"] == 0


# ---------------------------------------------------------------------------------------------
# A second method, registered here only: the engine, checkpoints, resume and evaluation serve
# it without knowing anything of it.


class ToyMethod(Method):
    """Predict the mean brightness of the partner image from the anchor's features.

    Its extra state is a step counter that must survive resume, and it draws from the
    engine's generator so that exact resume covers its randomness too.
    """

    name = "toy"

    def __init__(self, cfg, data, device, generator):
        super().__init__(cfg, data, device, generator)
        self.backbone = build_backbone(cfg.pretrain.arch, "random", None, cfg.data.image_size)[0]
        self.module = torch.nn.ModuleDict(
            {"backbone": self.backbone, "head": torch.nn.Linear(512, 1)}
        ).to(device)
        self.steps_seen = 0

    def step(self, net, rows_a, rows_b):
        x_a = torch.from_numpy(self.data.cache[rows_a]).float().div(255)  # B x S x S
        x_b = torch.from_numpy(self.data.cache[rows_b]).float().div(255)  # B x S x S
        noise = torch.rand(x_a.shape, generator=self.generator) * 0.1
        x = (x_a + noise).unsqueeze(1).expand(-1, 3, -1, -1)  # B x 3 x S x S
        pred = net["head"](net["backbone"](x)).squeeze(1)  # B
        loss = torch.nn.functional.mse_loss(pred, x_b.mean(dim=(1, 2)))
        return loss, {"n_same_image": int((rows_a == rows_b).sum()), "target_mean": x_b.mean()}

    def after_step(self):
        self.steps_seen += 1

    def extra_state(self):
        return {"steps_seen": torch.tensor(self.steps_seen)}

    def load_extra_state(self, state):
        self.steps_seen = int(state["steps_seen"])

    def eval_backbone(self):
        return self.backbone

    @classmethod
    def backbone_from_config(cls, cfg):
        return build_backbone(cfg.pretrain.arch, "random", None, cfg.data.image_size)[0]


@pytest.fixture
def toy_registered():
    register_method("toy", ToyMethod)
    yield
    _METHODS.pop("toy")


def test_a_second_method_trains_checkpoints_resumes_exactly_and_is_evaluated(
        toy_registered, tiny_config, tmp_path):
    from medaug.eval.evaluate import evaluate

    overrides = ("pretrain.method=toy", "pretrain.criterion=patient_all_studies")
    straight = pretrain(tiny_config(*overrides), tmp_path / "a", progress=False, monitor=KnnMonitor)
    pretrain(tiny_config(*overrides, "pretrain.epochs=1"), tmp_path / "b", progress=False, monitor=KnnMonitor)
    resumed = pretrain(tiny_config(*overrides), tmp_path / "b", progress=False, monitor=KnnMonitor)

    a = load_state(tmp_path / "a" / "checkpoints" / "epoch_0002")
    b = load_state(tmp_path / "b" / "checkpoints" / "epoch_0002")
    assert a["method"] == b["method"] == "toy"
    assert int(a["extra"]["steps_seen"]) == int(b["extra"]["steps_seen"]) == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [m["loss"] for m in straight["history"]] == [m["loss"] for m in resumed["history"]]
    # The method's statistics reach the epoch metrics: counts summed, others averaged.
    last = straight["history"][-1]
    assert isinstance(last["n_same_image"], int) and 0.0 < last["target_mean"] < 1.0

    # Evaluation reads the backbone key, never the method's own parameter names.
    backbone, _ = load_backbone(tmp_path / "a" / "checkpoints" / "epoch_0002")
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, a["model"][f"backbone.{key}"]), key
    cfg = tiny_config(*overrides, "eval.linear_epochs=2", "eval.n_splits=2", "eval.fraction=0.3",
                      "eval.bootstrap=0", "eval.roc_plot=false")
    results = evaluate(cfg, tmp_path / "a", tmp_path / "eval", progress=False)
    aucs = [s["auc"] for s in results["linear"]["Pleural Effusion"]["per_split"]]
    assert len(aucs) == 2 and all(0.0 <= x <= 1.0 for x in aucs)


def test_a_checkpoint_of_another_method_is_not_resumed(toy_registered, tiny_config, tmp_path):
    pretrain(tiny_config("pretrain.method=toy", "pretrain.epochs=1", "pretrain.knn_every=0"),
             tmp_path, progress=False, monitor=KnnMonitor)
    with pytest.raises(MedaugError, match="written by method 'toy'.*not by pretraining method "
                                          "'moco'"):
        pretrain(tiny_config("pretrain.epochs=2", "pretrain.knn_every=0"), tmp_path,
                 progress=False, monitor=KnnMonitor)


def test_unknown_method_is_a_user_error(tiny_config):
    with pytest.raises(MedaugError, match="unknown pretraining method 'byol'.*valid: moco"):
        tiny_config("pretrain.method=byol")
    with pytest.raises(MedaugError, match="cannot load pretraining method 'nowhere.mod:X'"):
        get_method("nowhere.mod:X")
