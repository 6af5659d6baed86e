"""Selection methods (``simclrv2.selection.methods``) against float64 brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simclrv2.errors import UserError
from simclrv2.selection import METHODS, parse_budget, select
from simclrv2.selection import methods as M


def blobs(centres: int = 6, per: int = 40, dim: int = 16, spread: float = 0.05, seed: int = 0):
    """Well-separated clusters of unequal size on the unit sphere: (features, true blob of each row)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dim))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    sizes = [per + 7 * c for c in range(centres)]
    x = np.concatenate([m + spread * rng.normal(size=(n, dim)) for m, n in zip(means, sizes)])
    return x.astype(np.float32), np.repeat(np.arange(centres), sizes)


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("method", METHODS)
def test_budget_is_exact_unique_within_candidates_and_deterministic(method):
    x, _ = blobs()
    candidates = np.arange(0, len(x), 2)
    labeled = np.array([1, 4, 10])
    a = select(x, 17, method, labeled=labeled, candidates=candidates, seed=3)
    b = select(x, 17, method, labeled=labeled, candidates=candidates, seed=3)
    assert len(a.chosen) == 17 == len(np.unique(a.chosen))
    assert np.isin(a.chosen, candidates).all() and not np.isin(a.chosen, labeled).any()
    np.testing.assert_array_equal(a.chosen, b.chosen)
    assert len(a.cluster) == len(a.score) == 17


@pytest.mark.parametrize("method", METHODS)
def test_unreadable_images_are_never_chosen(method):
    x, _ = blobs()
    x[::3] = np.nan
    chosen = select(x, 30, method, seed=0).chosen
    assert np.isfinite(x[chosen]).all()


def test_typiclust_covers_every_cluster_with_its_most_typical_image():
    x, blob = blobs()
    sel = select(x, 6, "typiclust", seed=0)
    assert sorted(blob[sel.chosen]) == list(range(6)), "one image from each blob"
    xu = unit(x)
    for i in sel.chosen:
        members = np.flatnonzero(blob == blob[i])
        d = np.linalg.norm(xu[members, None] - xu[None, members], axis=2)
        k = min(20, len(members) // 2)
        typical = 1 / (np.sort(d, axis=1)[:, 1:k + 1].mean(1) + 1e-5)
        assert members[np.argmax(typical)] == i


def test_typiclust_chooses_from_the_largest_uncovered_clusters_first():
    x, blob = blobs()
    sel = select(x, 3, "typiclust", seed=0)
    sizes = np.bincount(sel.assignment)
    assert list(sel.cluster) == list(np.argsort(-sizes, kind="stable")[:3])
    assert all(sel.assignment[i] == c for i, c in zip(sel.chosen, sel.cluster))
    # with 6 clusters (3 labeled + 3 to choose), the clusters holding a labeled image come last
    labeled = np.array([np.flatnonzero(blob == b)[0] for b in (5, 4, 3)])
    sel = select(x, 3, "typiclust", labeled=labeled, seed=0)
    assert sorted(blob[sel.chosen]) == [0, 1, 2]


def test_typicality_matches_float64_knn_mean_distance():
    rng = np.random.default_rng(1)
    x = unit(rng.normal(size=(50, 8)))
    got = M.typicality(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(x.astype(np.float32)), 5)
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    want = 1 / (np.sort(d, axis=1)[:, 1:6].mean(1) + 1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_purity_radius_is_the_quantile_of_the_distance_to_another_cluster():
    rng = np.random.default_rng(2)
    x = unit(rng.normal(size=(80, 6)))
    assignment = rng.integers(0, 4, size=80)
    got = M.purity_radius(torch.from_numpy(x.astype(np.float32)), assignment, purity=0.9)
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    other = np.where(assignment[:, None] != assignment[None], d, np.inf).min(1)
    assert got == pytest.approx(np.quantile(other, 0.1), rel=1e-4)
    # at that radius 90% of the balls hold one cluster only
    pure = [(assignment[d[i] <= got] == assignment[i]).all() for i in range(80)]
    assert np.mean(pure) >= 0.9 - 1 / 80


def test_ball_graph_matches_brute_force():
    rng = np.random.default_rng(3)
    x = unit(rng.normal(size=(60, 5)))
    pointers, columns = M.ball_graph(torch.from_numpy(x.astype(np.float32)), 0.9)
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    for i in range(60):
        assert set(columns[pointers[i]:pointers[i + 1]]) == set(np.flatnonzero(d[i] <= 0.9))


def test_probcover_greedy_maximises_new_coverage_at_each_step():
    x, _ = blobs(centres=4, per=30, spread=0.08)
    sel = select(x, 4, "probcover", seed=0)
    xt = torch.from_numpy(unit(x).astype(np.float32))
    radius = M.purity_radius(xt, sel.assignment)
    d = np.linalg.norm(unit(x)[:, None] - unit(x)[None], axis=2) <= radius
    covered = np.zeros(len(x), bool)
    for i, score in zip(sel.chosen, sel.score):
        gains = (d & ~covered[None]).sum(1)
        assert gains[i] == gains.max() == score
        covered |= d[i]


def test_kcenter_is_farthest_first_in_float64():
    x, _ = blobs(centres=3, per=20)
    labeled = np.array([0])
    sel = select(x, 5, "kcenter", labeled=labeled, seed=0)
    xu = unit(x)
    centres = [0]
    for i in sel.chosen:
        d = np.linalg.norm(xu[:, None] - xu[None, centres], axis=2).min(1)
        d[centres] = -1
        assert i == np.argmax(d)
        centres.append(i)


def test_random_is_uniform_over_candidates_and_seeded():
    x, _ = blobs()
    a = select(x, 20, "random", seed=0).chosen
    assert not np.array_equal(a, select(x, 20, "random", seed=1).chosen)


@pytest.mark.parametrize("text, pool, want", [("40", 1000, 40), ("10%", 1437, 144), ("0.5%", 100, 1),
                                              ("2.5%", 100, 3)])
def test_parse_budget(text, pool, want):
    assert parse_budget(text, pool) == want


@pytest.mark.parametrize("text", ["0", "-3", "abc", "0%", "101%", ""])
def test_bad_budgets_are_user_errors(text):
    with pytest.raises(UserError, match="--budget"):
        parse_budget(text, 100)


def test_budget_beyond_the_candidates_is_a_user_error():
    x, _ = blobs()
    with pytest.raises(UserError, match="more than the 5 images"):
        select(x, 6, "typiclust", candidates=np.arange(8), labeled=np.arange(3))


def test_lone_images_and_tiny_clusters_still_give_an_exact_budget():
    x, _ = blobs(centres=3, per=10)
    far = np.eye(16, dtype=np.float32)[[5, 9, 13]] * 10  # three isolated images: clusters of one
    x = np.concatenate([x, far])
    for method in METHODS:
        sel = select(x, len(x) - 2, method, seed=0)
        assert len(np.unique(sel.chosen)) == len(x) - 2 and np.isfinite(sel.score).all()
