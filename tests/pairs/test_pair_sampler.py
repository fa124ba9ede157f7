import numpy as np
import pandas as pd
import pytest
from _pairs_reference import random_table
from scipy.stats import chi2

from medaug.errors import MedaugError
from medaug.pairs import PairSampler, build_pair_index


def test_partners_always_in_the_anchor_set():
    rng = np.random.default_rng(0)
    for _ in range(20):
        table = random_table(rng)
        index = build_pair_index(table, "patient_all_studies")
        sampler = PairSampler(index, seed=5)
        for epoch in range(3):
            partners = sampler.sample(epoch)
            assert partners.shape == index.anchors.shape and partners.dtype == np.int64
            for i, p in enumerate(partners):
                assert p in index.partners(i)


def test_deterministic_per_seed_and_epoch_and_resumable():
    table = random_table(np.random.default_rng(1), max_patients=30)
    index = build_pair_index(table, "patient_all_studies")
    a = PairSampler(index, seed=3)
    history = [a.sample(e) for e in range(6)]
    fresh = PairSampler(index, seed=3)
    # Epoch 5 drawn first (as after a resume) equals epoch 5 drawn after 0..4.
    assert np.array_equal(fresh.sample(5), history[5])
    assert np.array_equal(a.sample(2), history[2])
    assert any(not np.array_equal(history[0], h) for h in history[1:])
    other_seed = PairSampler(index, seed=4)
    assert any(not np.array_equal(other_seed.sample(e), history[e]) for e in range(6))


def test_draws_are_uniform_within_each_set():
    # 2000 patients with 1..5 images each (all studies): each anchor's draw should hit
    # every position of its set with probability 1/size.
    sizes = np.tile(np.arange(1, 6), 400)
    patient = np.repeat(np.arange(len(sizes)), sizes)
    table = pd.DataFrame(
        {
            "patient_id": patient.astype(str),
            "study_id": np.arange(len(patient)).astype(str),
            "view": "frontal",
        }
    )
    index = build_pair_index(table, "patient_all_studies")
    sampler = PairSampler(index, seed=0)
    set_sizes = index.set_sizes()
    first_member = index.indices[index.indptr[:-1]]
    for k in range(2, 6):
        hits = np.zeros(k)
        for epoch in range(4):
            position = sampler.sample(epoch) - first_member  # members are consecutive rows
            np.add.at(hits, position[set_sizes == k], 1)
        expected = hits.sum() / k
        stat = ((hits - expected) ** 2 / expected).sum()
        assert stat < chi2.ppf(0.999, k - 1), (k, hits)
    only = sampler.sample(0)[set_sizes == 1]
    assert np.array_equal(only, index.anchors[set_sizes == 1])


def test_negative_seed_or_epoch_is_an_error():
    table = random_table(np.random.default_rng(2))
    index = build_pair_index(table, "patient_same_study")
    with pytest.raises(MedaugError, match="seed must be non-negative"):
        PairSampler(index, seed=-1)
    with pytest.raises(MedaugError, match="epoch must be non-negative"):
        PairSampler(index, seed=0).sample(-1)
