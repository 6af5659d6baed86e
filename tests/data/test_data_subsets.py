"""Held-out splits, class-balanced label subsets, ImageNet subset files, recorded index lists."""

import os
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simclrv2.data import (
    ImageSet,
    holdout_split,
    open_images,
    parse_label_spec,
    read_subset_file,
    select_labeled,
    write_index_list,
)
from simclrv2.errors import UserError

SUBSETS = "reference/imagenet_subsets"


def in_memory(sizes, names=None, unlabeled=0):
    """An ImageSet of 1x1 images with ``sizes[c]`` items of class c (interleaved), plus unlabeled."""
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)] + [np.full(unlabeled, -1)])
    labels = labels[np.random.default_rng(123).permutation(len(labels))].astype(np.int64)
    names = names or [f"c{c}" for c in range(len(sizes))]
    return ImageSet(None, np.zeros((len(labels), 1, 1, 3), np.uint8), labels, names, "mem")


def per_class(data, indices):
    return np.bincount(data.labels[indices], minlength=len(data.class_names)).tolist()


def user_error(fn, *args, fragments=(), **kwargs):
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message
    return message


# ---------------------------------------------------------------- holdout_split

def test_holdout_counts_per_stratum():
    labels = np.array([0] * 10 + [1] * 3 + [-1] * 5 + [2] * 1)
    train, hold = holdout_split(labels, 0.2, seed=0)
    # 0: 10 * 0.2 = 2; 1: 0.6 -> 1; unlabeled: 1.0 -> 1; class 2 has a single item: kept for training.
    assert Counter(labels[hold].tolist()) == {0: 2, 1: 1, -1: 1}
    assert train.dtype == np.int64 and hold.dtype == np.int64
    assert list(train) == sorted(train) and list(hold) == sorted(hold)
    assert sorted(np.concatenate([train, hold]).tolist()) == list(range(len(labels)))


def test_holdout_keeps_one_item_on_each_side():
    labels = np.array([0, 0, 1, 1, 1])
    _, hold = holdout_split(labels, 0.9, seed=1)  # 1.8 -> at most n - 1 = 1; 2.7 -> 2
    assert Counter(labels[hold].tolist()) == {0: 1, 1: 2}
    _, hold = holdout_split(labels, 0.01, seed=1)  # 0.02 -> at least 1
    assert Counter(labels[hold].tolist()) == {0: 1, 1: 1}


def test_holdout_rounds_exactly_from_the_decimal():
    assert 0.29 * 50 < 14.5  # float arithmetic would round this down to 14
    _, hold = holdout_split(np.zeros(50, np.int64), 0.29, seed=0)
    assert len(hold) == 15


def test_holdout_is_seeded():
    labels = np.repeat(np.arange(3), 40)
    a = holdout_split(labels, 0.25, seed=7)
    b = holdout_split(labels, 0.25, seed=7)
    c = holdout_split(labels, 0.25, seed=8)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_holdout_fraction_out_of_range(fraction):
    user_error(holdout_split, np.zeros(10, np.int64), fraction, 0, fragments=[str(fraction)])


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 30), min_size=1, max_size=6),
       fraction=st.sampled_from([0.05, 0.1, 0.25, 0.5, 0.75]), seed=st.integers(0, 2**31))
def test_holdout_properties(sizes, fraction, seed):
    labels = np.concatenate([np.full(n, c - 1) for c, n in enumerate(sizes)]).astype(np.int64)
    train, hold = holdout_split(labels, fraction, seed)
    assert not set(train.tolist()) & set(hold.tolist())
    assert len(train) + len(hold) == len(labels)
    for value, n in zip(range(-1, len(sizes) - 1), sizes):
        held = int((labels[hold] == value).sum())
        expected = min(max(int(Fraction(str(fraction)) * n + Fraction(1, 2)), 1), n - 1) if n >= 2 else 0
        assert held == expected
    np.testing.assert_array_equal(holdout_split(labels, fraction, seed)[1], hold)


# ---------------------------------------------------------------- parse_label_spec

@pytest.mark.parametrize("text,fraction", [
    ("1%", Fraction(1, 100)), ("10%", Fraction(1, 10)), ("0.5%", Fraction(1, 200)),
    (" 2.5 % ", Fraction(1, 40)), ("100%", Fraction(1)),
])
def test_parse_percentages(text, fraction):
    spec = parse_label_spec(text)
    assert spec.fraction == fraction and spec.per_class is None and spec.path is None


def test_parse_per_class_and_file(tmp_path):
    assert parse_label_spec("5/class").per_class == 5
    assert parse_label_spec(" 12 / Class").per_class == 12
    (tmp_path / "s.txt").write_text("x\n")
    spec = parse_label_spec(str(tmp_path / "s.txt"))
    assert spec.path == tmp_path / "s.txt" and spec.fraction is None


@pytest.mark.parametrize("bad", ["0%", "150%", "0/class", "10", "ten%", "", "5/img", "-1%"])
def test_parse_errors_name_the_spec(bad):
    user_error(parse_label_spec, bad, fragments=[repr(bad), "1%"])


def test_parse_folder_is_not_a_subset_file(tmp_path):
    user_error(parse_label_spec, str(tmp_path), fragments=[str(tmp_path), "folder"])


# ---------------------------------------------------------------- select_labeled

SIZES = [100, 50, 7, 1]


@pytest.mark.parametrize("spec,counts", [
    ("10%", [10, 5, 1, 1]),     # 0.7 and 0.1 are raised to one per class
    ("5%", [5, 3, 1, 1]),       # 2.5 rounds half up
    ("1%", [1, 1, 1, 1]),
    ("30%", [30, 15, 2, 1]),    # 2.1 -> 2
    ("100%", SIZES),
    ("1/class", [1, 1, 1, 1]),
])
def test_select_counts_are_class_balanced(spec, counts):
    data = in_memory(SIZES, unlabeled=20)
    chosen = select_labeled(data, spec, seed=0)
    assert per_class(data, chosen) == counts
    assert chosen.dtype == np.int64 and list(chosen) == sorted(set(chosen.tolist()))
    assert (data.labels[chosen] >= 0).all()  # unlabeled items are never chosen


def test_select_k_per_class_needs_k_items():
    data = in_memory(SIZES)
    user_error(select_labeled, data, "7/class", 0, fragments=["c3 (1)", "mem", "7"])
    assert "c2" not in user_error(select_labeled, data, "7/class", 0)


def test_select_is_seeded_and_nested():
    data = in_memory([200, 120, 80])
    one, ten = select_labeled(data, "1%", 3), select_labeled(data, "10%", 3)
    np.testing.assert_array_equal(ten, select_labeled(data, "10%", 3))
    assert not np.array_equal(ten, select_labeled(data, "10%", 4))
    assert set(one.tolist()) <= set(ten.tolist())


def test_select_from_the_train_side_of_a_holdout():
    data = in_memory([60, 30, 9])
    train, hold = holdout_split(data.labels, 0.2, seed=5)
    chosen = select_labeled(data, "10%", seed=5, pool=train)
    assert set(chosen.tolist()) <= set(train.tolist())
    assert not set(chosen.tolist()) & set(hold.tolist())
    # Counts come from the pool: 48, 24 and 7 items remain -> 4.8, 2.4, 0.7 -> 5, 2, 1.
    assert per_class(data, chosen) == [5, 2, 1]


def test_select_class_missing_from_the_pool_is_named():
    data = in_memory([10, 10, 10], names=["ant", "bee", "cow"])
    pool = np.flatnonzero(data.labels != 1)
    user_error(select_labeled, data, "10%", 0, pool=pool, fragments=["bee", "1 class"])


def test_select_needs_labels():
    data = ImageSet(None, np.zeros((4, 1, 1, 3), np.uint8), np.full(4, -1), [], "flat")
    user_error(select_labeled, data, "10%", 0, fragments=["flat", "no labels"])


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5),
       percent=st.sampled_from(["1%", "5%", "10%", "12.5%", "50%"]), seed=st.integers(0, 2**31),
       holdout=st.sampled_from([None, 0.1, 0.3]))
def test_select_properties(sizes, percent, seed, holdout):
    data = in_memory(sizes, unlabeled=5)
    pool = None if holdout is None else holdout_split(data.labels, holdout, seed)[0]
    chosen = select_labeled(data, percent, seed, pool=pool)
    fraction = Fraction(percent[:-1]) / 100
    available = per_class(data, np.flatnonzero(data.labels >= 0) if pool is None else pool[data.labels[pool] >= 0])
    assert per_class(data, chosen) == [max(1, int(fraction * n + Fraction(1, 2))) for n in available]
    if pool is not None:
        assert set(chosen.tolist()) <= set(pool.tolist())
    np.testing.assert_array_equal(chosen, select_labeled(data, percent, seed, pool=pool))


# ---------------------------------------------------------------- subset files

def test_official_one_percent_file(shared_dir):
    pairs = read_subset_file(shared_dir / SUBSETS / "1percent.txt")
    assert len(pairs) == 12811
    counts = Counter(cls for cls, _ in pairs)
    assert len(counts) == 1000 and set(counts.values()) == {12, 13}
    assert pairs[0] == ("n04235860", "n04235860_14959.JPEG")
    assert all(name.startswith(cls + "_") for cls, name in pairs)


def test_official_ten_percent_file(shared_dir):
    pairs = read_subset_file(shared_dir / SUBSETS / "10percent.txt")
    assert len(pairs) == 128116
    assert len({cls for cls, _ in pairs}) == 1000


def fake_imagenet(root, lines, extra_per_class=1):
    """An ImageNet-layout folder (root/<synset>/<file>) of empty files for the listed names."""
    classes = sorted({line.split("_")[0] for line in lines})
    for synset in classes:
        (root / synset).mkdir(parents=True)
        for k in range(extra_per_class):
            (root / synset / f"{synset}_extra{k}.JPEG").touch()
    for line in lines:
        (root / line.split("_")[0] / line).touch()
    return classes


def test_official_one_percent_file_selects_its_files(shared_dir):
    # The layout open_images gives ImageNet's train folder, without writing 13,811 files:
    # every listed file plus one unlisted file per class, under /imagenet/train/<synset>/.
    subset = shared_dir / SUBSETS / "1percent.txt"
    lines = subset.read_text().split()
    classes = sorted({line.split("_")[0] for line in lines})
    names = sorted(lines + [f"{synset}_extra.JPEG" for synset in classes])
    root = os.path.join(os.sep, "imagenet", "train")
    index = {synset: c for c, synset in enumerate(classes)}
    data = ImageSet([os.path.join(root, n.split("_")[0], n) for n in names], None,
                    np.array([index[n.split("_")[0]] for n in names]), classes, root, root=root)
    chosen = select_labeled(data, str(subset), seed=0)
    assert len(chosen) == 12811
    assert sorted(os.path.basename(data.paths[i]) for i in chosen) == sorted(lines)
    assert not any("extra" in data.paths[i] for i in chosen)


def test_subset_file_classes_not_in_the_data(shared_dir, tmp_path):
    subset = shared_dir / SUBSETS / "1percent.txt"
    lines = subset.read_text().split()
    first_two = sorted({line.split("_")[0] for line in lines})[:2]
    fake_imagenet(tmp_path / "train", [line for line in lines if line.split("_")[0] in first_two])
    data = open_images(str(tmp_path / "train"), labeled=True)
    user_error(select_labeled, data, str(subset), 0, fragments=[subset, "998 class(es)"])


def test_subset_file_names_missing_files(tmp_path):
    fake_imagenet(tmp_path / "train", ["n01_1.JPEG", "n02_1.JPEG"])
    (tmp_path / "s.txt").write_text("n01_1.JPEG\nn02_7.JPEG\nn02_8.JPEG\n")
    data = open_images(str(tmp_path / "train"), labeled=True)
    user_error(select_labeled, data, str(tmp_path / "s.txt"), 0,
               fragments=[tmp_path / "s.txt", "2 file(s)", "n02_7.JPEG"])


def test_subset_file_matches_by_name_within_the_class_folder(tmp_path):
    # n02_1.JPEG also exists in class n01's folder; the line means the one in n02.
    fake_imagenet(tmp_path / "train", ["n01_1.JPEG", "n02_1.JPEG"])
    (tmp_path / "train" / "n01" / "n02_1.JPEG").touch()
    (tmp_path / "s.txt").write_text("n02_1.JPEG\n")
    data = open_images(str(tmp_path / "train"), labeled=True)
    (chosen,) = select_labeled(data, str(tmp_path / "s.txt"), 0)
    assert data.paths[chosen] == str(tmp_path / "train" / "n02" / "n02_1.JPEG")


def test_subset_file_of_relative_paths(tmp_path):
    for rel in ["cat/a.png", "cat/b.png", "dog/sub/c.png", "dog/d.png"]:
        (tmp_path / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / rel).touch()
    (tmp_path / "s.txt").write_text("cat/b.png\n\ndog/sub/c.png\ncat/b.png\n")
    data = open_images(str(tmp_path / "data"), labeled=True)
    chosen = select_labeled(data, str(tmp_path / "s.txt"), 0)
    assert [os.path.relpath(data.paths[i], tmp_path / "data") for i in chosen] == ["cat/b.png", "dog/sub/c.png"]


def test_subset_file_cannot_reach_into_the_holdout(tmp_path):
    fake_imagenet(tmp_path / "train", [f"n01_{i}.JPEG" for i in range(10)], extra_per_class=0)
    data = open_images(str(tmp_path / "train"), labeled=True)
    train, hold = holdout_split(data.labels, 0.5, seed=0)
    (tmp_path / "s.txt").write_text(os.path.basename(data.paths[hold[0]]) + "\n")
    user_error(select_labeled, data, str(tmp_path / "s.txt"), 0, pool=train,
               fragments=[tmp_path / "s.txt", "held out"])


def test_read_subset_file_errors(tmp_path):
    user_error(read_subset_file, tmp_path / "none.txt", fragments=[tmp_path / "none.txt"])
    (tmp_path / "empty.txt").write_text("\n\n")
    user_error(read_subset_file, tmp_path / "empty.txt", fragments=[tmp_path / "empty.txt", "no files"])
    (tmp_path / "tabs.txt").write_text("a.png\tcat\nb.png\tcat\textra\n")
    user_error(read_subset_file, tmp_path / "tabs.txt", fragments=[tmp_path / "tabs.txt", "line 2"])


# ---------------------------------------------------------------- write_index_list

def test_index_list_records_and_reloads_a_folder_choice(tmp_path):
    for rel in ["cat/a.png", "cat/b.png", "dog/c.png", "dog/d.png", "dog/e.png"]:
        (tmp_path / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / rel).touch()
    data = open_images(str(tmp_path / "data"), labeled=True)
    chosen = select_labeled(data, "1/class", seed=2)
    out = write_index_list(tmp_path / "run" / "labeled.txt", data, chosen)
    lines = out.read_text().splitlines()
    assert lines == [f"{data.paths[i]}\t{data.class_names[data.labels[i]]}" for i in chosen]
    assert [line.split("\t")[1] for line in lines] == ["cat", "dog"]
    np.testing.assert_array_equal(select_labeled(data, str(out), seed=99), chosen)


def test_index_list_for_in_memory_data(tmp_path):
    data = open_images("digits", labeled=True)
    chosen = select_labeled(data, "2/class", seed=0)
    out = write_index_list(tmp_path / "labeled.txt", data, chosen)
    first = out.read_text().splitlines()[0]
    assert first == f"digits[{chosen[0]}]\t{data.labels[chosen[0]]}"
    np.testing.assert_array_equal(select_labeled(data, str(out), seed=1), chosen)
