import pytest

from medaug.errors import MedaugError
from medaug.pairs import CRITERIA, Criterion, check_criterion, get_criterion, list_criteria
from medaug.pairs.criteria import register_criterion


def test_registry_holds_the_paper_criteria():
    names = list_criteria()
    for name in (
        "instance",
        "patient_all_studies",
        "patient_same_study",
        "patient_distinct_studies",
        "patient_same_study_same_lat",
        "patient_same_study_distinct_lat",
        "patient_all_studies_same_label",
    ):
        assert name in names
        assert check_criterion(name) == name


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


def test_bad_rule_is_rejected():
    with pytest.raises(MedaugError, match="laterality rule 'both'"):
        Criterion("x", "same", "both")


def test_register_and_conflict():
    crit = Criterion("tmp_distinct_studies_same_lat", "distinct", "same")
    try:
        register_criterion(crit)
        assert "tmp_distinct_studies_same_lat" in list_criteria()
        register_criterion(crit)  # identical re-registration is harmless
        with pytest.raises(MedaugError, match="already registered"):
            register_criterion(Criterion("tmp_distinct_studies_same_lat", "same", "same"))
    finally:
        CRITERIA.pop("tmp_distinct_studies_same_lat", None)


def test_config_checks_criterion_names():
    from medaug.config import load_config

    with pytest.raises(MedaugError, match="unknown pair criterion 'nope'"):
        load_config(None, ["pretrain.size_match=nope"])
