"""The NSD design: the synthetic twin has the real one's structure; the real one reads right."""

from __future__ import annotations

import numpy as np
import pytest

from mindsearch.data import nsd_design
from mindsearch.errors import MindsearchError


def _check_structure(d: nsd_design.Design, reps: int = 3):
    for s, sd in d.subjects.items():
        assert np.array_equal(sd.session, np.arange(sd.n_trials) // d.trials_per_session + 1)
        assert np.array_equal(sd.trial_in_session, np.arange(sd.n_trials) % d.trials_per_session)
        _, counts = np.unique(sd.image_ids, return_counts=True)
        assert counts.max() <= reps
        # a test trial is exactly a trial showing a shared image
        assert np.array_equal(sd.is_test, np.isin(sd.image_ids, d.shared_ids))
        assert sd.rep.min() == 0 and sd.rep.max() == reps - 1
        assert np.all(sd.image_ids < d.n_images)


def test_synthetic_design_structure():
    d = nsd_design.synthetic_design([1, 2, 5], n_shared=50, n_unique=100, trials_per_session=90, seed=3)
    _check_structure(d)
    assert d.source == "synthetic"
    assert d.n_images == 50 + 8 * 100
    for sd in d.subjects.values():
        assert sd.n_trials == 450 and sd.n_sessions == 5
        _, counts = np.unique(sd.image_ids, return_counts=True)
        assert np.all(counts == 3)
        assert np.array_equal(sd.test_image_ids(), d.shared_ids)
        # repetitions are spread over the run, not clustered in one session
        sess_per_image = [len(np.unique(sd.session[sd.image_ids == i])) for i in d.shared_ids]
        assert np.mean(sess_per_image) > 2.0
    # subjects share the test images and nothing else
    u1 = set(d.subjects[1].image_ids) - set(d.shared_ids)
    u2 = set(d.subjects[2].image_ids) - set(d.shared_ids)
    assert not (u1 & u2)
    # same ordering for every subject (like NSD's masterordering)
    assert np.array_equal(d.subjects[1].is_test, d.subjects[5].is_test)


def test_synthetic_design_deterministic_and_sessions():
    a = nsd_design.synthetic_design([1], 20, 40, trials_per_session=30, seed=0)
    b = nsd_design.synthetic_design([1], 20, 40, trials_per_session=30, seed=0)
    c = nsd_design.synthetic_design([1], 20, 40, trials_per_session=30, seed=1)
    assert np.array_equal(a.subjects[1].image_ids, b.subjects[1].image_ids)
    assert not np.array_equal(a.subjects[1].image_ids, c.subjects[1].image_ids)
    t = nsd_design.synthetic_design([1], 20, 40, trials_per_session=30, seed=0, sessions=2)
    assert t.subjects[1].n_trials == 60


def test_repetition_index():
    ids = np.array([5, 3, 5, 5, 3, 9])
    assert nsd_design.repetition_index(ids).tolist() == [0, 0, 1, 2, 1, 0]


def test_bad_subject():
    with pytest.raises(MindsearchError):
        nsd_design.synthetic_design([9], 20, 40)


def test_real_design(nsd_fixtures):
    d = nsd_design.real_design([1, 3], nsd_fixtures / "nsd_expdesign.mat")
    _check_structure(d)
    assert d.source == "nsd_expdesign.mat" and d.n_images == 73000
    s1, s3 = d.subjects[1], d.subjects[3]
    assert s1.n_trials == 30000 and s1.n_sessions == 40
    assert s3.n_sessions == 32  # subject 3 completed 32 sessions
    assert s1.is_test.sum() == 3000
    assert np.array_equal(s1.test_image_ids(), d.shared_ids) and len(d.shared_ids) == 1000
    assert d.shared_ids[0] == 2950  # sharedix starts at NSD id 2951 (1-based)
    _, counts = np.unique(s1.image_ids, return_counts=True)
    assert len(counts) == 10000 and np.all(counts == 3)


def test_missing_design_file(tmp_path):
    with pytest.raises(MindsearchError):
        nsd_design.load_expdesign(tmp_path / "nope.mat")
