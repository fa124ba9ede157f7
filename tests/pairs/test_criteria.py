import pytest
from _pairs_reference import PRESET_SPECS

from medaug.errors import MedaugError
from medaug.pairs import (
    CRITERIA,
    Criterion,
    check_criterion,
    criterion_label,
    get_criterion,
    list_criteria,
    resolve_criterion,
)
from medaug.pairs.criteria import register_criterion


def test_registry_holds_the_paper_criteria_as_presets():
    assert list(PRESET_SPECS) == list_criteria()[: len(PRESET_SPECS)]
    for name, mapping in PRESET_SPECS.items():
        assert check_criterion(name) == name
        assert get_criterion(name) == resolve_criterion(mapping)
        assert get_criterion(name).to_mapping() == mapping
        assert criterion_label(resolve_criterion(mapping)) == name


def test_unknown_criterion_lists_valid_names():
    with pytest.raises(MedaugError) as err:
        check_criterion("patient_same_studdy")
    message = str(err.value)
    assert "patient_same_studdy" in message and "\n" not in message
    for name in list_criteria():
        assert name in message


def test_self_membership_follows_the_rules():
    assert get_criterion("patient_same_study").contains_self
    assert get_criterion("patient_all_studies_same_label").contains_self
    assert not get_criterion("patient_distinct_studies").contains_self
    assert not get_criterion("patient_same_study_distinct_lat").contains_self
    assert get_criterion("instance").contains_self


def test_grammar_parses_every_key():
    crit = resolve_criterion(
        {
            "same": ["patient_id", "study_id"],
            "distinct": "view",
            "within": {"study_days": 30, "age": 2.5},
            "label": "same",
            "max_partners": 2,
            "anchors_with": {"preset": "patient_same_study", "distinct": ["projection"]},
        }
    )
    assert crit.same == ("patient_id", "study_id") and crit.distinct == ("view",)
    assert crit.within == (("age", 2.5), ("study_days", 30.0))
    assert crit.same_label and crit.max_partners == 2
    assert crit.anchors_with == Criterion(("patient_id", "study_id"), ("projection",))
    assert crit.columns == ("patient_id", "study_id", "view", "age", "study_days", "projection")
    assert crit.needs_label
    assert criterion_label(crit) == (
        "same=patient_id+study_id distinct=view within=age<=2.5 within=study_days<=30 "
        "label=same max_partners=2 anchors_with=(same=patient_id+study_id distinct=projection)"
    )
    # A preset with keys beside it: those keys replace the preset's.
    capped = resolve_criterion({"preset": "patient_all_studies", "max_partners": 3})
    assert capped.rules() == get_criterion("patient_all_studies")
    assert criterion_label(capped) == "patient_all_studies max_partners=3"
    assert resolve_criterion({"preset": "patient_same_study", "distinct": ["view"]}) == (
        get_criterion("patient_same_study_distinct_lat")
    )
    with_anchors = resolve_criterion(
        {"preset": "patient_same_study_same_lat", "anchors_with": "patient_same_study_distinct_lat"}
    )
    assert criterion_label(with_anchors) == (
        "patient_same_study_same_lat anchors_with=patient_same_study_distinct_lat"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"same": ["patient_id"], "distint": ["view"]},
            "unknown criterion key(s) 'distint'; valid:",
        ),
        ({"same": ["view"], "distinct": ["view"]}, "view cannot be both 'same' and 'distinct'"),
        ({"distinct": ["view"]}, "give the columns that must match in 'same'"),
        ({"same": []}, "give the columns that must match in 'same'"),
        ({"same": "patient_id", "within": {"age": -1}}, "within.age must be a number >= 0"),
        ({"same": "patient_id", "within": {"age": "ten"}}, "within.age must be a number >= 0"),
        ({"same": "patient_id", "within": [30]}, "must map numeric columns to windows"),
        ({"same": "patient_id", "label": "distinct"}, "label must be 'same' or null"),
        ({"same": "patient_id", "max_partners": 0}, "max_partners must be at least 1"),
        ({"same": "patient_id", "max_partners": 1.5}, "max_partners must be an integer"),
        ({"same": ["patient_id", "patient_id"]}, "a column is repeated in 'same'"),
        ({"same": [3]}, "must be a list of column names"),
        ({"preset": "nope"}, "unknown pair criterion 'nope'; valid: instance"),
        (
            {"same": "patient_id", "anchors_with": {"same": "view", "distinct": "view"}},
            "pretrain.criterion.anchors_with: column(s) view cannot be both",
        ),
        (["patient_id"], "expected a criterion name or mapping"),
    ],
)
def test_bad_grammar_is_one_line(spec, message):
    with pytest.raises(MedaugError) as err:
        resolve_criterion(spec, "pretrain.criterion")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("pretrain.criterion") or "unknown pair criterion" in str(
        err.value
    )


def test_register_and_conflict():
    crit = Criterion(("patient_id",), ("study_id",), (("age", 5.0),))
    name = "tmp_distinct_studies_close_in_age"
    try:
        register_criterion(name, crit)
        assert name in list_criteria() and criterion_label(crit) == name
        register_criterion(name, crit)  # identical re-registration is harmless
        with pytest.raises(MedaugError, match="already registered"):
            register_criterion(name, Criterion(("patient_id",)))
    finally:
        CRITERIA.pop(name, None)
    with pytest.raises(MedaugError, match="criterion 'bad': column.*both"):
        Criterion(("view",), ("view",), name="bad")


def test_config_checks_criteria():
    from medaug.config import load_config

    with pytest.raises(MedaugError, match="unknown pair criterion 'nope'"):
        load_config(None, ["pretrain.size_match=nope"])
    with pytest.raises(MedaugError, match="pretrain.criterion: unknown criterion key"):
        load_config(None, ["pretrain.criterion={same: [patient_id], bogus: 1}"])
    with pytest.raises(MedaugError, match="pretrain.criterion.*unknown column.*study_dayz"):
        load_config(None, ["pretrain.criterion={same: [patient_id], within: {study_dayz: 3}}"])
    cfg = load_config(None, ["pretrain.criterion={preset: patient_all_studies, max_partners: 2}"])
    # Groupings computed from a column (decades of age) are columns for the rules.
    load_config(None, ["pretrain.criterion={same: [sex, age_band], distinct: [patient_id]}"])
    assert resolve_criterion(cfg.pretrain.criterion).max_partners == 2
    # A dotted override goes into the mapping already there.
    cfg = load_config(
        None,
        [
            "pretrain.criterion={preset: patient_all_studies, max_partners: 2}",
            "pretrain.criterion.max_partners=4",
            "pretrain.criterion.within.age=10",
        ],
    )
    assert cfg.pretrain.criterion == {
        "preset": "patient_all_studies",
        "max_partners": 4,
        "within": {"age": 10},
    }
