"""The retrieval protocol on hand-checkable cases."""

import numpy as np
import pytest

from mindsearch.retrieval import normalise, pools, retrieval_scores, top1_full_pool, top1_in_pool, topk_full_pool
from mindsearch.indexes.errors import InputError


def test_identity_embeddings_score_100_percent():
    x = np.random.default_rng(0).normal(size=(500, 3, 8))
    s = retrieval_scores(x, x.copy())
    assert s["brain_to_image_top1"] == 1.0
    assert s["image_to_brain_top1"] == 1.0
    assert s["full_pool_brain_to_image_top1"] == 1.0
    assert s["brain_to_image_top1_ci95"] == 0.0
    assert (s["pool"], s["loops"], s["seed"], s["n"]) == (300, 30, 42, 500)


def test_shuffled_pairs_score_near_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1000, 64))
    y = x[rng.permutation(1000)]
    s = retrieval_scores(x, y)
    # chance is 1/300; 30 loops × 300 items = 9000 trials -> mean well under 2%.
    assert s["brain_to_image_top1"] < 0.02
    assert s["image_to_brain_top1"] < 0.02


def test_directions_are_not_swapped():
    # Every brain sample leans towards image 0. Brain->image: each brain sample picks image 0,
    # so only item 0 is right. Image->brain: image k>0 is only present in brain k, so each
    # image finds its own brain sample.
    n = 300
    images = np.eye(n, dtype=np.float32)
    brain = np.eye(n, dtype=np.float32) * 0.5
    brain[:, 0] = 1.0
    s = retrieval_scores(brain, images, pool=n, loops=1)
    assert s["brain_to_image_top1"] == pytest.approx(1 / n)
    assert s["image_to_brain_top1"] == pytest.approx(1.0)
    assert s["mindeye_fwd"] == s["image_to_brain_top1"]
    assert s["mindeye_bwd"] == s["brain_to_image_top1"]


def test_pools_match_mindeye2_sampler():
    # MindEye2: seed_everything(42) then np.random.choice(n, 300, replace=False) per loop.
    np.random.seed(42)
    expected = [np.random.choice(1000, 300, replace=False) for _ in range(30)]
    got = pools(1000, 300, 30, 42)
    assert len(got) == 30
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)


def test_scores_use_exactly_those_pools():
    # Only items 0..9 are decodable; the protocol's score must equal the share of pool members
    # among them, loop by loop, for the pools the MindEye2 sampler draws.
    rng = np.random.default_rng(3)
    images = rng.normal(size=(1000, 32))
    brain = -images  # every own image is the worst match...
    brain[:10] = images[:10]  # ...except for items 0..9, which always win
    np.random.seed(42)
    expected = np.mean([np.isin(np.random.choice(1000, 300, replace=False), np.arange(10)).mean()
                        for _ in range(30)])
    s = retrieval_scores(brain, images)
    assert s["brain_to_image_top1"] == pytest.approx(expected, abs=1e-12)
    assert s["brain_to_image_top1"] > 0


def test_ties_count_as_misses_everywhere():
    x = np.ones((5, 4), dtype=np.float32)  # every candidate ties
    assert retrieval_scores(x, x, pool=5, loops=2)["brain_to_image_top1"] == 0.0
    assert top1_full_pool(x, x) == (0.0, 0.0)
    assert top1_full_pool(np.eye(4), np.eye(4)) == (1.0, 1.0)


def test_hand_computed_pool():
    # 3 items; brain 2 is closer to image 1 than to image 2.
    images = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    brain = np.array([[1, 0.1], [0.1, 1], [0.05, 1]], dtype=np.float32)
    sim = normalise(brain) @ normalise(images).T
    assert top1_in_pool(sim).tolist() == [True, True, False]
    s = retrieval_scores(brain, images, pool=3, loops=5)
    assert s["brain_to_image_top1"] == pytest.approx(2 / 3)
    assert topk_full_pool(normalise(brain), normalise(images), 2) == 1.0


def test_mismatched_inputs_are_rejected():
    with pytest.raises(InputError, match="rows"):
        retrieval_scores(np.ones((4, 3)), np.ones((5, 3)))
    with pytest.raises(InputError, match="same embedding space"):
        retrieval_scores(np.ones((4, 3)), np.ones((4, 2)))
    bad = np.ones((4, 3))
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        retrieval_scores(bad, np.ones((4, 3)))


def test_csls_marks_down_hub_images_and_leaves_the_protocol_alone():
    """Brain embeddings that all lean towards one direction make the images along it hubs:
    plain cosine keeps retrieving them; CSLS with a reference bank (other draws, not the test
    items) discounts them and recovers each query's own image."""
    from mindsearch.retrieval import csls_scores, retrieval_scores

    rng = np.random.default_rng(0)
    d, n = 32, 200

    def draw(m):
        images = rng.standard_normal((m, d)).astype(np.float32)
        lean = np.zeros(d, np.float32)
        lean[0] = 1.0
        brain = images + 2.0 * rng.standard_normal((m, d)) + 8.0 * lean  # noisy, all pulled to e0
        return brain.astype(np.float32), images

    brain, images = draw(n)
    ref_brain, ref_images = draw(500)
    plain = retrieval_scores(brain, images, pool=100, loops=10)
    csls = csls_scores(brain, images, ref_brain, ref_images, k=10, pool=100, loops=10)
    assert csls["brain_to_image_top1"] > plain["brain_to_image_top1"] + 0.08  # measured 0.41 -> 0.52
    assert csls["reference_brain"] == 500 and csls["k"] == 10
    assert retrieval_scores(brain, images, pool=100, loops=10) == plain  # nothing shared, nothing changed
