"""Which images to label, from their self-supervised features alone (no labels are read here).

At a budget of a few labels per class, *which* images carry the labels matters as much as the
model: images typical of dense regions of a good embedding, spread over all of its clusters, teach
a classifier more than a uniform random draw, which repeats some classes and misses others.

- ``typiclust``: TypiClust (Hacohen, Dekel & Weinshall, "Active Learning on a Budget", ICML 2022).
  K-means into (labeled + budget) clusters; repeatedly take the largest cluster holding the fewest
  labeled or chosen images and choose its most *typical* image, typicality being the inverse mean
  distance to its 20 nearest neighbours within the cluster.
- ``probcover``: ProbCover (Yehuda, Dekel, Hacohen & Weinshall, "Active Learning Through a Covering
  Lens", NeurIPS 2022). Balls of radius delta around every image, delta the largest radius at which
  95% of the balls are "pure" (hold images of one k-means cluster only); greedily choose the image
  whose ball covers the most images not yet covered.
- ``kcenter``: greedy k-center (the core-set of Sener & Savarese, ICLR 2018): repeatedly the image
  farthest from every labeled or chosen one.
- ``random``: a uniform random draw, the paper's (and the baseline every method must beat).

Features are L2-normalised first (distances are then cosine distances, as the contrastive loss
compares them). Everything is seeded: the same features, budget and seed give the same selection.
Memory stays O(N x D + edges): distances are computed in blocks, k-means is mini-batched above
``MINIBATCH_ABOVE`` images, and typicality inside a cluster larger than ``TYPICALITY_REFERENCE``
images is measured against a seeded sample of that many of its images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..names import DEFAULT_METHOD, METHODS

MAX_CLUSTERS = 500  # TypiClust's cap on k-means clusters (the official code's)
MIN_CLUSTER_SIZE = 5  # TypiClust: clusters this small are outliers, chosen from last
TYPICALITY_NEIGHBOURS = 20  # TypiClust's k for the kNN density
TYPICALITY_REFERENCE = 20_000  # images a cluster's typicality is measured against, at most
PURITY = 0.95  # ProbCover's alpha
MINIBATCH_ABOVE = 50_000  # images beyond which k-means is mini-batched
BLOCK = 2048  # rows per block of distances


@dataclass
class Selection:
    """The chosen images (indices into the features, in the order chosen) and why each was chosen."""

    chosen: np.ndarray  # int64 (B,)
    cluster: np.ndarray  # int64 (B,): the cluster each was chosen from (-1: the method has none)
    score: np.ndarray  # float64 (B,): typicality, images newly covered, distance to the chosen, or 0
    assignment: np.ndarray | None = None  # int64 (N,): every image's cluster, where the method clusters


def select(features: np.ndarray, budget: int, method: str = DEFAULT_METHOD, labeled: np.ndarray | None = None,
           candidates: np.ndarray | None = None, seed: int = 0) -> Selection:
    """Choose ``budget`` images among ``candidates`` (default: every row not labeled).

    ``features`` (N, D) are the images' features; ``labeled`` indexes rows already labeled (they are
    never chosen again, and count as covering their neighbourhood). Rows with non-finite features
    (unreadable images) are never chosen.
    """
    if method not in METHODS:
        raise UserError(f"--method {method!r} is not a selection method: use one of {', '.join(METHODS)}")
    features = np.asarray(features)
    if features.ndim != 2:
        raise UserError(f"features have shape {features.shape}, expected (images, dimensions)")
    n = features.shape[0]
    labeled = np.unique(np.asarray(labeled if labeled is not None else [], dtype=np.int64))
    pool = np.arange(n) if candidates is None else np.unique(np.asarray(candidates, dtype=np.int64))
    finite = np.isfinite(features).all(1) & (np.abs(features).sum(1) > 0)
    pool = pool[finite[pool] & ~np.isin(pool, labeled)]
    if budget < 1:
        raise UserError(f"budget {budget}: choose at least one image")
    if budget > len(pool):
        raise UserError(f"budget {budget} is more than the {len(pool)} images that can still be chosen: "
                        "lower --budget")
    # Only the candidates and the labeled images take part (held-out images do not).
    rows = np.union1d(pool, labeled[finite[labeled]])
    local_pool = np.searchsorted(rows, pool)
    local_labeled = np.searchsorted(rows, labeled[finite[labeled]])
    xs = torch.from_numpy(_normalised(features[rows]))  # the one copy of the features
    rng = np.random.default_rng([7, int(seed)])
    if method == "random":
        chosen = rng.choice(local_pool, budget, replace=False)
        result = Selection(chosen, np.full(budget, -1), np.zeros(budget))
    elif method == "kcenter":
        result = _kcenter(xs, budget, local_pool, local_labeled, rng)
    elif method == "typiclust":
        result = _typiclust(xs, budget, local_pool, local_labeled, seed, rng)
    else:
        result = _probcover(xs, budget, local_pool, local_labeled, seed, rng)
    assignment = None
    if result.assignment is not None:
        assignment = np.full(n, -1, dtype=np.int64)
        assignment[rows] = result.assignment
    return Selection(rows[np.asarray(result.chosen, dtype=np.int64)], np.asarray(result.cluster, dtype=np.int64),
                     np.asarray(result.score, dtype=np.float64), assignment)


def parse_budget(text: str | int, pool: int) -> int:
    """``"40"`` -> 40 images; ``"10%"`` -> 10% of the ``pool`` images (rounded half up, at least 1)."""
    from fractions import Fraction

    value = str(text).strip()
    try:
        if value.endswith("%"):
            percent = Fraction(value[:-1].strip())
            if not 0 < percent <= 100:
                raise ValueError
            return max(1, math.floor(percent * pool / 100 + Fraction(1, 2)))
        count = int(value)
        if count < 1:
            raise ValueError
        return count
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--budget {text!r} is not a count of images (40) or a percentage of them (10%)") from None


# ---------------------------------------------------------------- helpers

def _normalised(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in place (``x`` is a fresh copy) and as float32."""
    x = x.astype(np.float32, copy=False)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances of unit vectors: 2 - 2 cos, clamped at 0."""
    return (2 - 2 * (a @ b.T)).clamp_(min=0)


def kmeans(x: torch.Tensor, k: int, seed: int) -> np.ndarray:
    """Cluster ids of the rows of ``x`` (k-means++, scikit-learn; mini-batched for large N)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    data = x.numpy()
    k = min(k, len(data))
    if len(data) > MINIBATCH_ABOVE:
        model = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=4096, n_init=3, max_iter=100)
    else:
        model = KMeans(n_clusters=k, random_state=seed, n_init=3)
    return model.fit_predict(data).astype(np.int64)


# ---------------------------------------------------------------- TypiClust

def typicality(members: torch.Tensor, reference: torch.Tensor, k: int) -> np.ndarray:
    """1 / mean distance of each member to its k nearest reference images (itself excluded)."""
    out = np.zeros(len(members))
    if reference.shape[0] < 2:  # a lone image: no neighbour to measure a density with
        return out
    for lo in range(0, len(members), BLOCK):
        d = _sq_distances(members[lo:lo + BLOCK], reference).sqrt_()
        # the image itself is its own nearest neighbour at distance 0 when it is in the reference
        near = d.topk(min(k + 1, reference.shape[0]), dim=1, largest=False).values[:, 1:]
        out[lo:lo + BLOCK] = (1.0 / (near.mean(1).double() + 1e-5)).numpy()
    return out


def _typiclust(x: torch.Tensor, budget: int, pool: np.ndarray, labeled: np.ndarray, seed: int,
               rng: np.random.Generator) -> Selection:
    k = min(len(labeled) + budget, MAX_CLUSTERS, x.shape[0])
    assignment = kmeans(x, k, seed)
    sizes = np.bincount(assignment, minlength=k)
    covered = np.bincount(assignment[labeled], minlength=k) if len(labeled) else np.zeros(k, np.int64)
    open_count = np.bincount(assignment[pool], minlength=k)  # candidates left in each cluster
    order = np.argsort(assignment, kind="stable")
    members_of = np.split(order, np.cumsum(sizes)[:-1])
    is_candidate = np.zeros(x.shape[0], dtype=bool)
    is_candidate[pool] = True
    outlier = sizes <= MIN_CLUSTER_SIZE
    typical: dict[int, np.ndarray] = {}  # per cluster: typicality of its members, -inf once not choosable
    chosen, clusters, scores = [], [], []
    for _ in range(budget):
        open_clusters = np.flatnonzero(open_count > 0)
        # fewest labeled first, then the largest; outlier clusters (<= MIN_CLUSTER_SIZE images) last
        rank = np.lexsort((open_clusters, -sizes[open_clusters], covered[open_clusters], outlier[open_clusters]))
        c = int(open_clusters[rank[0]])
        members = members_of[c]
        if c not in typical:
            reference = members
            if len(members) > TYPICALITY_REFERENCE:
                reference = np.sort(rng.choice(members, TYPICALITY_REFERENCE, replace=False))
            neighbours = max(1, min(TYPICALITY_NEIGHBOURS, len(members) // 2))
            values = typicality(x[members], x[reference], neighbours)
            values[~is_candidate[members]] = -np.inf
            typical[c] = values
        j = int(np.argmax(typical[c]))
        chosen.append(int(members[j]))
        clusters.append(c)
        scores.append(float(typical[c][j]))
        typical[c][j] = -np.inf
        open_count[c] -= 1
        covered[c] += 1
    return Selection(np.array(chosen), np.array(clusters), np.array(scores), assignment)


# ---------------------------------------------------------------- ProbCover

def purity_radius(x: torch.Tensor, assignment: np.ndarray, purity: float = PURITY) -> float:
    """The largest radius at which a ``purity`` share of the balls hold one cluster only.

    A ball of radius r around image i is pure when r is below the distance from i to the nearest
    image of another cluster; the radius is that distance's (1 - purity) quantile.
    """
    labels = torch.from_numpy(assignment)
    nearest_other = np.empty(x.shape[0])
    for lo in range(0, x.shape[0], BLOCK):
        d = _sq_distances(x[lo:lo + BLOCK], x)
        same = labels[lo:lo + BLOCK, None] == labels[None, :]
        nearest_other[lo:lo + BLOCK] = d.masked_fill_(same, math.inf).min(1).values.sqrt_().numpy()
    return float(np.quantile(nearest_other[np.isfinite(nearest_other)], 1 - purity))


def ball_graph(x: torch.Tensor, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """CSR (row pointers, columns) of the images within ``radius`` of each image (itself included)."""
    pointers, columns = [0], []
    for lo in range(0, x.shape[0], BLOCK):
        inside = _sq_distances(x[lo:lo + BLOCK], x) <= radius * radius
        rows, cols = inside.nonzero(as_tuple=True)
        columns.append(cols.numpy())
        counts = np.bincount(rows.numpy(), minlength=inside.shape[0])
        pointers.extend((pointers[-1] + np.cumsum(counts)).tolist())
    return np.asarray(pointers, dtype=np.int64), np.concatenate(columns).astype(np.int64)


def _probcover(x: torch.Tensor, budget: int, pool: np.ndarray, labeled: np.ndarray, seed: int,
               rng: np.random.Generator) -> Selection:
    k = min(len(labeled) + budget, MAX_CLUSTERS, x.shape[0])
    assignment = kmeans(x, k, seed)
    radius = purity_radius(x, assignment)
    pointers, columns = ball_graph(x, radius)
    n = x.shape[0]
    covered = np.zeros(n, dtype=bool)
    # gain[i]: images in i's ball not yet covered (the ball relation is symmetric)
    gain = np.diff(pointers).astype(np.int64)

    def cover(i: int) -> None:
        ball = columns[pointers[i]:pointers[i + 1]]
        fresh = ball[~covered[ball]]
        covered[fresh] = True
        for j in fresh:  # every ball that held j now gains one image fewer
            np.subtract.at(gain, columns[pointers[j]:pointers[j + 1]], 1)

    for i in labeled:
        cover(int(i))
    available = np.zeros(n, dtype=bool)
    available[pool] = True
    chosen, scores = [], []
    for _ in range(budget):
        candidate_gain = np.where(available, gain, -1)
        best = int(candidate_gain.max())
        if best <= 0:  # everything is covered: the rest at random, as the official code does
            i = int(rng.choice(np.flatnonzero(available)))
        else:
            ties = np.flatnonzero(candidate_gain == best)
            i = int(ties[0] if len(ties) == 1 else rng.choice(ties))
        chosen.append(i)
        scores.append(max(best, 0))
        available[i] = False
        cover(i)
    chosen_arr = np.array(chosen)
    return Selection(chosen_arr, assignment[chosen_arr], np.array(scores, dtype=np.float64), assignment)


# ---------------------------------------------------------------- k-center

def _kcenter(x: torch.Tensor, budget: int, pool: np.ndarray, labeled: np.ndarray,
             rng: np.random.Generator) -> Selection:
    n = x.shape[0]
    nearest = torch.full((n,), math.inf, dtype=torch.float64)
    for lo in range(0, len(labeled), BLOCK):
        d = _sq_distances(x, x[labeled[lo:lo + BLOCK]]).min(1).values.double()
        nearest = torch.minimum(nearest, d)
    available = np.zeros(n, dtype=bool)
    available[pool] = True
    chosen, scores = [], []
    for step in range(budget):
        if step == 0 and not len(labeled):
            i, score = int(rng.choice(pool)), 0.0
        else:
            masked = np.where(available, nearest.numpy(), -1.0)
            i = int(np.argmax(masked))
            score = float(math.sqrt(max(masked[i], 0.0)))
        chosen.append(i)
        scores.append(score)
        available[i] = False
        nearest = torch.minimum(nearest, _sq_distances(x, x[i:i + 1])[:, 0].double())
    return Selection(np.array(chosen), np.full(budget, -1), np.array(scores), None)
