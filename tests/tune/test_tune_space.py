"""Sweep files: shipped configs expand to the paper's trials; bad configs fail before any work."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from medaug.config import MocoConfig, MvmaeConfig
from medaug.errors import MedaugError
from medaug.moco.negatives import list_strategies
from medaug.pairs import list_criteria
from medaug.tune.space import (
    VARIANT,
    list_sweeps,
    load_sweep,
    parse_sweep,
    trial_for_config,
    tune_param_space,
)

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """A local file standing in for ImageNet weights (the config only checks it exists)."""
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    path.write_bytes(b"")
    return str(path)


def _sweep(name: str, weights: str, *extra: str):
    return load_sweep(name, [f"pretrain.weights={weights}", *extra])


def _resolved(sweep):
    return [(t, sweep.resolve(t.params)) for t in sweep.grid_trials()]


def test_every_shipped_sweep_is_listed():
    expected = {"table1", "table2", "table3", "table4", "table5", "table6", "full", "demo"}
    assert expected <= set(list_sweeps())
    assert {p.stem for p in SWEEPS.glob("*.yaml")} == set(list_sweeps())


# (sweep, pretraining trials, baselines) when ImageNet weights are given.
COUNTS = [
    ("table1", 6 * 2, ["imagenet"]),
    ("table2", 2, []),
    ("table3", 2, []),
    ("table4", 3, []),
    ("table5", 2, []),
    ("table6", 6, []),
    ("full", 7 * 2 * 5, ["imagenet", "random"]),
    ("max_partners", 5, []),
    ("metadata_criteria", 7, []),
]


@pytest.mark.parametrize(("name", "n_pretrain", "baselines"), COUNTS)
def test_trial_counts(name, n_pretrain, baselines, weights):
    trials = _sweep(name, weights).grid_trials()
    assert [t.baseline for t in trials if t.baseline] == baselines
    assert sum(t.baseline is None for t in trials) == n_pretrain
    keys = [t.key for t in trials]
    assert len(set(keys)) == len(keys)
    # Keys are deterministic: a second load gives the same plan.
    assert keys == [t.key for t in _sweep(name, weights).grid_trials()]


def test_table1_is_criteria_by_crop(weights):
    got = {
        (c.pretrain.criterion, c.pretrain.crop_scale)
        for t, c in _resolved(_sweep("table1", weights))
        if not t.baseline
    }
    criteria = [
        "instance",
        "patient_same_study_same_lat",
        "patient_same_study_distinct_lat",
        "patient_same_study",
        "patient_all_studies",
        "patient_distinct_studies",
    ]
    assert got == set(itertools.product(criteria, [None, 0.95]))


def test_table2_to_table5_settings(weights):
    t2 = {c.pretrain.criterion for _, c in _resolved(_sweep("table2", weights))}
    assert t2 == {"patient_all_studies", "patient_all_studies_same_label"}
    t3 = {
        (c.pretrain.criterion, c.pretrain.size_match, c.pretrain.distinct_only)
        for _, c in _resolved(_sweep("table3", weights))
    }
    assert t3 == {
        ("patient_distinct_studies", None, True),
        ("patient_all_studies", "patient_distinct_studies", True),
    }
    # Table 4: full-data runs, x in its own set; only the all-lateralities set is cut.
    t4 = [
        (c.pretrain.criterion, c.pretrain.size_match, c.pretrain.distinct_only, c.pretrain.anchors_with)
        for _, c in _resolved(_sweep("table4", weights))
    ]
    assert t4 == [
        ("patient_same_study_same_lat", None, False, None),
        ("patient_same_study", "patient_same_study_same_lat", False, None),
        ("patient_same_study", None, False, None),
    ]
    # Table 5: the same anchors (a counterpart of the other laterality in the study), each
    # set cut to the other's size, x kept in its own same-laterality set.
    t5 = {
        (c.pretrain.criterion, c.pretrain.size_match, c.pretrain.distinct_only, c.pretrain.anchors_with)
        for _, c in _resolved(_sweep("table5", weights))
    }
    assert t5 == {
        ("patient_same_study_same_lat", "patient_same_study_distinct_lat", False,
         "patient_same_study_distinct_lat"),
        ("patient_same_study_distinct_lat", "patient_same_study_same_lat", False,
         "patient_same_study_distinct_lat"),
    }


def test_table6_and_full_cover_the_registries(weights):
    t6 = _resolved(_sweep("table6", weights))
    assert {c.moco.negatives for _, c in t6} == set(list_strategies())
    assert {c.pretrain.criterion for _, c in t6} == {"patient_same_study"}
    # Reweighted twice, as two named rows: the formula's reading of the paper's t = 0.1 and
    # the prose's (90% of the weight on same-laterality keys).
    reweighted = {t.params["variant"]: c.moco.reweight_t for t, c in t6 if c.moco.negatives == "reweighted"}
    assert reweighted == {"reweighted_formula_t0.1": 0.1, "reweighted_prose_t0.9": 0.9}
    assert sum(c.moco.negatives != "reweighted" for _, c in t6) == len(list_strategies()) - 1
    full = {
        (c.pretrain.criterion, c.pretrain.crop_scale, c.moco.negatives)
        for t, c in _resolved(_sweep("full", weights))
        if not t.baseline
    }
    assert full == set(itertools.product(list_criteria(), [None, 0.95], list_strategies()))


def test_max_partners_sweeps_vary_the_cap_of_one_criterion(weights):
    from medaug.pairs import resolve_criterion

    for sweep, caps in (
        (_sweep("max_partners", weights), [1, 2, 4, 8, None]),
        (load_sweep("max_partners_phantom", output="/tmp/mp-out"), [1, 2, 4, None]),
    ):
        got = []
        for t, c in _resolved(sweep):
            if t.baseline:
                continue
            crit = resolve_criterion(c.pretrain.criterion)
            assert crit.rules() == resolve_criterion("patient_all_studies")
            assert c.pretrain.distinct_only
            got.append(crit.max_partners)
            assert t.label == f"max_partners={'none' if crit.max_partners is None else crit.max_partners}"
        assert got == caps


def test_metadata_criteria_sweeps(weights):
    from medaug.pairs import criterion_label, resolve_criterion

    expected = {
        "same_study": ("patient_same_study", "default", "view"),
        "same_projection": ("same=patient_id+projection", "default", "view"),
        "sex_age_band": (
            "same=sex+age_band distinct=patient_id max_partners=4", "default", "view"
        ),
        "appended_by_view": ("patient_same_study", "appended", "view"),
        "appended_by_projection": ("patient_same_study", "appended", "projection"),
        "appended_by_sex": ("patient_same_study", "appended", "sex"),
        "appended_by_age_band": ("patient_same_study", "appended", "age_band"),
    }
    # The phantom's studies are dated: its sweep adds pairs of studies at most 30 days apart.
    dated = {"distinct_studies_30_days": (
        "same=patient_id distinct=study_id within=study_days<=30", "default", "view"
    )}
    for sweep, extra in (
        (_sweep("metadata_criteria", weights), {}),
        (load_sweep("metadata_criteria_phantom", output="/tmp/mc-out"), dated),
    ):
        got = {
            t.params["variant"]: (
                criterion_label(resolve_criterion(c.pretrain.criterion)),
                c.moco.negatives,
                c.moco.hard_negatives_by,
            )
            for t, c in _resolved(sweep)
            if not t.baseline
        }
        assert got == {**expected, **extra}


def test_trial_params_name_criteria_readably(weights):
    """MLflow params and report rows name a declarative criterion in one readable line."""
    from medaug.tune.report import _options
    from medaug.tune.trial import trial_params

    sweep = _sweep("max_partners", weights)
    trial = sweep.grid_trials()[1]
    params = trial_params(sweep.resolve(trial.params), trial)
    assert params["criterion"] == "patient_all_studies max_partners=2"
    assert params["pretrain.criterion.max_partners"] == 2  # the flattened keys stay too
    table5 = _sweep("table5", weights)
    trial = table5.grid_trials()[0]
    params = trial_params(table5.resolve(trial.params), trial)
    assert params["criterion"] == "patient_same_study_same_lat"
    assert params["anchors_with"] == "patient_same_study_distinct_lat"
    text = {k: str(v) for k, v in params.items()}
    assert _options(text) == (
        "size-matched to patient_same_study_distinct_lat; "
        "anchors with a partner under patient_same_study_distinct_lat"
    )


def test_space_varies_keys_inside_a_criterion(weights):
    """A grid over names and one over a key inside the criterion combine: the name becomes
    the preset of a declarative criterion, whatever order the grids are written in."""
    from medaug.pairs import resolve_criterion

    sweep = _sweep(
        "table1",
        weights,
        "space.pretrain.criterion.max_partners=[2, null]",
        "space.pretrain.criterion.within.study_order=[1]",
        "space.pretrain.crop_scale=[none]",
        "space.pretrain.criterion=[patient_all_studies, patient_distinct_studies]",
        "baselines=[]",
    )
    got = {}
    for t, c in _resolved(sweep):
        crit = resolve_criterion(c.pretrain.criterion)
        got[t.label] = (crit.rules().same, crit.rules().distinct, crit.within, crit.max_partners)
    within = (("study_order", 1.0),)
    assert got == {
        "criterion=patient_all_studies, crop_scale=none, max_partners=2, study_order=1":
            (("patient_id",), (), within, 2),
        "criterion=patient_all_studies, crop_scale=none, max_partners=none, study_order=1":
            (("patient_id",), (), within, None),
        "criterion=patient_distinct_studies, crop_scale=none, max_partners=2, study_order=1":
            (("patient_id",), ("study_id",), within, 2),
        "criterion=patient_distinct_studies, crop_scale=none, max_partners=none, study_order=1":
            (("patient_id",), ("study_id",), within, None),
    }
    with pytest.raises(MedaugError, match="pretrain.criterion: unknown criterion key.*max_partner"):
        _sweep("max_partners", weights, "space.pretrain.criterion.max_partner=[1]")


def test_demo_is_a_real_comparison():
    sweep = load_sweep("demo", output="/tmp/demo-out")
    criteria = {sweep.resolve(t.params).pretrain.criterion for t in sweep.grid_trials() if not t.baseline}
    assert {"instance", "patient_same_study", "patient_all_studies", "patient_distinct_studies"} <= criteria
    cfg = sweep.resolve(sweep.grid_trials()[-1].params)
    assert cfg.data.csv.startswith("/tmp/demo-out/")


def test_positive_control_runs_the_paper_criteria_long_enough_to_learn():
    """``medaug demo --control``: the phantom_paper sweep on a positive_control phantom."""
    from medaug.commands.demo import CONTROL
    from medaug.data.phantom import DEFAULT_STYLE, resolve_style

    assert CONTROL.sweep == "phantom_paper" and "patient_distinct_studies" in CONTROL.also_against
    style = resolve_style(CONTROL.style)
    assert style != DEFAULT_STYLE and style.exposure_jitter > DEFAULT_STYLE.exposure_jitter
    sweep = load_sweep(CONTROL.sweep, output="/tmp/control-out")
    configs = [sweep.resolve(t.params) for t in sweep.grid_trials() if not t.baseline]
    assert [c.pretrain.criterion for c in configs] == [
        "instance", "patient_same_study", "patient_distinct_studies", "patient_all_studies",
        "patient_all_studies_same_label",
    ]
    assert all(c.pretrain.epochs == 20 and c.moco.queue_size == 1024 for c in configs)
    assert [t.params for t in sweep.grid_trials() if t.baseline] == [{"baseline": "random"}]


def test_paper_tables_need_weights_but_smoke_does_not():
    with pytest.raises(MedaugError, match="pretrain.weights"):
        load_sweep("table1")
    smoke = load_sweep("table1", smoke=True)
    trials = smoke.grid_trials()
    assert all(not t.baseline for t in trials)  # no weights: the ImageNet baseline is dropped
    cfg = smoke.resolve(trials[0].params)
    assert (cfg.pretrain.epochs, cfg.pretrain.init, cfg.data.image_size) == (2, "random", 32)


def test_overrides(weights):
    sweep = _sweep(
        "table1", weights, "pretrain.epochs=2", "space.pretrain.criterion=[instance, patient_same_study]",
        "space.pretrain.crop_scale=[none]", "tune.max_concurrent=3", "baselines=[]",
    )
    trials = sweep.grid_trials()
    assert [sweep.resolve(t.params).pretrain.criterion for t in trials] == ["instance", "patient_same_study"]
    assert all(sweep.resolve(t.params).pretrain.epochs == 2 for t in trials)
    assert sweep.tune.max_concurrent == 3


def test_repeats_offset_the_seed(weights):
    sweep = _sweep("table2", weights, "tune.num_samples=3", "seed=10")
    trials = sweep.grid_trials()
    assert len(trials) == 6
    seeds = [sweep.resolve(t.params).seed for t in trials]
    assert seeds == [10, 11, 12, 10, 11, 12]
    assert len({t.key for t in trials}) == 6


BASE = {
    "name": "t",
    "data": {"csv": "x.csv"},
    "pretrain": {"epochs": 3},
    "space": {"pretrain.criterion": {"grid": ["instance", "patient_same_study"]}},
}


def _with(**changes):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        keys = dotted.split("__")
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return raw


BAD = [
    ("unknown top-level key", _with(bogus=1), "unknown sweep key"),
    ("unknown config key", _with(pretrain__bogus=1), "unknown config key 'pretrain.bogus'"),
    ("unknown criterion", _with(space={"pretrain.criterion": {"grid": ["instance", "nope"]}}), "unknown pair criterion 'nope'"),
    ("unknown strategy", _with(space={"moco.negatives": ["default", "hardest"]}), "unknown negative strategy 'hardest'"),
    ("unknown space key", _with(space={"pretrain.bogus": [1, 2]}), "unknown config key"),
    ("space key outside sections", _with(space={"lr": [1, 2]}), "must start with one of"),
    ("range low >= high", _with(space={"pretrain.lr": {"loguniform": [1e-3, 1e-4]}}), "low < high"),
    ("loguniform from zero", _with(space={"pretrain.lr": {"loguniform": [0, 1e-3]}}), "low > 0"),
    ("range on an int", _with(space={"pretrain.epochs": {"uniform": [1, 5]}}), "float settings only"),
    ("range badly shaped", _with(space={"pretrain.lr": {"uniform": [1e-4]}}), "needs \\[low, high\\]"),
    ("range outside valid values", _with(space={"moco.reweight_t": {"uniform": [0.5, 1.5]}}), "reweight_t must lie in"),
    ("two kinds", _with(space={"pretrain.lr": {"grid": [1e-4], "uniform": [1e-4, 1e-3]}}), "expected one of"),
    ("empty grid", _with(space={"pretrain.lr": {"grid": []}}), "grid is empty"),
    ("unknown tune key", _with(tune={"bogus": 1}), "unknown tune key"),
    ("unknown metric", _with(tune={"metric": "accuracy"}), "tune.metric 'accuracy' unknown"),
    ("bad mode", _with(tune={"mode": "up"}), "tune.mode"),
    ("bad resources", _with(tune={"resources": {"cpus": 1}}), "tune.resources"),
    ("asha beyond epochs", _with(tune={"asha": {"grace_period": 5}}), "grace_period"),
    ("unknown baseline", _with(baselines=["imagenet21k"]), "unknown baseline"),
    ("fixed and swept", _with(pretrain__criterion="instance"), "also varied by the space"),
    (
        "variant clashes with grid",
        _with(space={"pretrain.criterion": ["instance"], "variants": [{"name": "a", "pretrain.criterion": "instance"}]}),
        "also varies",
    ),
    ("variant without name", _with(space={"variants": [{"pretrain.criterion": "instance"}]}), "'name'"),
    (
        "variant with unknown criterion",
        {**BASE, "space": {"variants": [{"name": "a", "pretrain.size_match": "nope"}]}},
        "unknown pair criterion 'nope'",
    ),
    ("bad queue for batch", _with(moco__queue_size=100), "divisible by the global batch"),
]


@pytest.mark.parametrize(("raw", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_sweeps_are_rejected(raw, message):
    with pytest.raises(MedaugError, match=message):
        load_sweep(raw)


BAD_SETS = [
    ("bogus=1", "unknown sweep key 'bogus'"),
    ("pretrain.bogus=1", "unknown config key 'pretrain.bogus'"),
    ("space.pretrain.criterion=[instance, nope]", "unknown pair criterion 'nope'"),
    ("moco.negatives=nope", "unknown negative strategy 'nope'"),
    ("pretrain.criterion=instance", "also varied by the space"),
    ("space=1", "name the space key"),
]


@pytest.mark.parametrize(("override", "message"), BAD_SETS)
def test_bad_overrides_are_rejected(override, message):
    with pytest.raises(MedaugError, match=message):
        load_sweep(BASE, [override])


def test_continuous_space_uses_optuna_domains():
    from ray import tune

    raw = _with(space={
        "pretrain.lr": {"loguniform": [1e-5, 1e-3]},
        "moco.temperature": {"uniform": [0.1, 0.5]},
        "pretrain.crop_scale": [None, 0.95],
        "variants": [{"name": "a", "pretrain.criterion": "instance"}, {"name": "b", "pretrain.criterion": "patient_same_study"}],
    }, tune={"num_samples": 4})
    sweep = load_sweep(raw)
    space = tune_param_space(sweep)
    assert isinstance(space["pretrain.lr"], tune.search.sample.Float)
    assert space["pretrain.lr"].lower == 1e-5 and space["pretrain.lr"].upper == 1e-3
    assert isinstance(space["pretrain.lr"].sampler, tune.search.sample.LogUniform)
    assert isinstance(space["moco.temperature"].sampler, tune.search.sample.Uniform)
    assert space["variant"].categories == ["a", "b"]
    assert space["pretrain.crop_scale"].categories == [None, 0.95]
    draw = {"pretrain.lr": 3e-4, "moco.temperature": 0.3, "pretrain.crop_scale": None, "variant": "b"}
    trial = trial_for_config(sweep, draw)
    assert trial.key == trial_for_config(sweep, dict(draw)).key  # deterministic
    assert trial.key != trial_for_config(sweep, {**draw, "pretrain.lr": 3.00001e-4}).key
    cfg = sweep.resolve(trial.params)
    assert (cfg.pretrain.lr, cfg.moco.temperature, cfg.pretrain.criterion) == (3e-4, 0.3, "patient_same_study")


def test_grid_space_is_keyed_by_trial():
    sweep = load_sweep(BASE)
    space = tune_param_space(sweep)
    keys = [t.key for t in sweep.grid_trials()]
    assert space == {"trial": {"grid_search": keys}}
    assert trial_for_config(sweep, {"trial": keys[1]}) == sweep.grid_trials()[1]
    with pytest.raises(MedaugError, match="no trial"):
        trial_for_config(sweep, {"trial": "elsewhere"})


def test_output_placeholder(tmp_path):
    raw = _with(data__csv="{output}/data/train.csv")
    sweep = load_sweep(raw, output=tmp_path)
    assert sweep.resolve({"pretrain.criterion": "instance"}).data.csv == f"{tmp_path.resolve()}/data/train.csv"


def test_find_sweep_from_another_folder(tmp_path, monkeypatch):
    from medaug.tune.space import find_sweep

    monkeypatch.chdir(tmp_path)  # as under `ray submit`, which runs in the home folder
    assert find_sweep("sweeps/table1.yaml") == SWEEPS / "table1.yaml"
    assert find_sweep("table6") == SWEEPS / "table6.yaml"
    with pytest.raises(MedaugError, match="shipped sweeps: .*table1"):
        find_sweep("table9")


def test_a_sweep_that_varies_the_method_gives_each_trial_its_own_section():
    """MoCo and the multi-view MAE side by side: the base holds both methods' sections, each
    trial keeps its own method's, and a section set for one method only is refused."""
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["moco"] = {"queue_size": 32}
    raw["mvmae"] = {"vit": "vit_nano", "patch_size": 8}
    raw["space"] = {"variants": [
        {"name": "moco", "pretrain.method": "moco"},
        {"name": "mvmae", "pretrain.method": "mvmae", "mvmae.beta_max": 0.0},
    ]}
    sweep = parse_sweep(raw)
    by_name = {t.params[VARIANT]: sweep.resolve(t.params) for t in sweep.grid_trials()}
    assert by_name["moco"].moco.queue_size == 32
    assert by_name["moco"].mvmae == MvmaeConfig()
    assert (by_name["mvmae"].mvmae.vit, by_name["mvmae"].mvmae.beta_max) == ("vit_nano", 0.0)
    assert by_name["mvmae"].moco == MocoConfig()
    # Without the method varying, a section of the other method is an error naming it.
    raw.pop("space")
    raw["pretrain"]["method"] = "moco"
    with pytest.raises(MedaugError, match="mvmae.vit, mvmae.patch_size set, but pretrain.method "
                                          "is 'moco'"):
        parse_sweep(raw)
