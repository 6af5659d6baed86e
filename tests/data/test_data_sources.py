"""open_images: bundled digits, class-per-folder and flat folders, csv/tsv lists, bad input."""

import os

import numpy as np
import pytest
from PIL import Image

from simclrv2.data import BadImage, ImageSet, open_images
from simclrv2.errors import UserError


def write_image(path, value=0, size=(6, 4)):
    """A small flat-colour image in the format the suffix names; returns the absolute path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 7)).save(path)
    return str(path.resolve())


def user_error(spec, labeled, *fragments):
    with pytest.raises(UserError) as info:
        open_images(spec, labeled=labeled)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message
    return message


# ---------------------------------------------------------------- digits

def test_digits_are_scaled_three_channel_images():
    from sklearn.datasets import load_digits

    data = open_images("digits", labeled=True)
    raw = load_digits()
    assert len(data) == 1797 and data.paths is None and data.arrays.shape == (1797, 8, 8, 3)
    assert data.arrays.dtype == np.uint8 and data.labels.dtype == np.int64
    assert data.class_names == [str(c) for c in range(10)] and data.labeled
    np.testing.assert_array_equal(data.labels, raw.target)
    # The first digit's top row is 0 0 5 13 9 1 0 0 (of 16): round(v * 255 / 16).
    np.testing.assert_array_equal(raw.images[0, 0], [0, 0, 5, 13, 9, 1, 0, 0])
    first = data.load(0)
    np.testing.assert_array_equal(first[0, :, 0], [0, 0, 80, 207, 143, 16, 0, 0])
    assert (first[..., 0] == first[..., 2]).all()
    assert data.arrays.max() == 255 and data.arrays.min() == 0
    assert data.describe(3) == "digits[3]"
    np.testing.assert_array_equal(data.arrays[..., 0], (raw.images.astype(np.int64) * 255 + 8) // 16)


def test_digits_read_without_scikit_learn_finding_them_are_the_same(monkeypatch):
    # The fast path reads scikit-learn's CSV directly; the fallback asks load_digits.
    import importlib.util

    from simclrv2.data import sources

    fast = sources._digits_arrays()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    slow = sources._digits_arrays()
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])


def test_digits_keep_labels_when_unlabeled_requested():
    data = open_images("digits", labeled=False)
    assert data.labeled and len(data.class_names) == 10


def test_load_returns_a_copy_for_in_memory_data():
    data = open_images("digits", labeled=True)
    image = data.load(5)
    image[:] = 0
    assert data.arrays[5].any()


# ---------------------------------------------------------------- folders

@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "data"
    files = {
        "cat/a.png": 10, "cat/sub/b.jpg": 20, "cat/C.JPEG": 30, "dog/d.webp": 40,
        "dog/deep/er/e.bmp": 50, "emu/f.tiff": 60, "emu/g.tif": 70,
    }
    for rel, value in files.items():
        write_image(root / rel, value)
    # Hidden files and folders, and files that are not images, are ignored.
    write_image(root / "cat" / ".hidden.png")
    write_image(root / "cat" / ".thumbs" / "h.png")
    write_image(root / ".git" / "i.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("about this data")
    return root


def test_class_per_folder(class_folder):
    data = open_images(str(class_folder), labeled=True)
    assert data.class_names == ["cat", "dog", "emu"]
    rel = [os.path.relpath(p, class_folder) for p in data.paths]
    assert rel == ["cat/C.JPEG", "cat/a.png", "cat/sub/b.jpg", "dog/d.webp", "dog/deep/er/e.bmp",
                   "emu/f.tiff", "emu/g.tif"]
    np.testing.assert_array_equal(data.labels, [0, 0, 0, 1, 1, 2, 2])
    assert all(os.path.isabs(p) for p in data.paths)
    assert data.labeled and data.name == str(class_folder) and data.root == str(class_folder)
    assert data.describe(1) == str(class_folder / "cat" / "a.png")
    for i in range(len(data)):
        image = data.load(i)
        assert image.shape == (4, 6, 3) and image.dtype == np.uint8


def test_unlabeled_mode_keeps_folder_labels(class_folder):
    unlabeled = open_images(str(class_folder), labeled=False)
    labeled = open_images(str(class_folder), labeled=True)
    assert unlabeled.paths == labeled.paths and unlabeled.class_names == labeled.class_names
    np.testing.assert_array_equal(unlabeled.labels, labeled.labels)


def test_flat_folder_unlabeled(tmp_path):
    for name in ["b.png", "a.jpg", "nested/c.webp"]:
        write_image(tmp_path / name)
    write_image(tmp_path / "nested" / "deeper" / "d.tif")
    data = open_images(str(tmp_path), labeled=False)
    assert [os.path.relpath(p, tmp_path) for p in data.paths] == \
        ["a.jpg", "b.png", "nested/c.webp", "nested/deeper/d.tif"]
    np.testing.assert_array_equal(data.labels, [-1, -1, -1, -1])
    assert data.class_names == [] and not data.labeled


def test_flat_folder_labeled_is_an_error(tmp_path):
    write_image(tmp_path / "a.png")
    user_error(str(tmp_path), True, tmp_path, "no class sub-folders")


def test_images_outside_class_folders_are_named(tmp_path):
    write_image(tmp_path / "cat" / "a.png")
    write_image(tmp_path / "stray.jpg")
    user_error(str(tmp_path), True, tmp_path, "stray.jpg", "1 image")
    # Without labels the same folder is fine: every image, no labels.
    data = open_images(str(tmp_path), labeled=False)
    assert len(data) == 2 and not data.labeled


def test_empty_class_folder_is_named(tmp_path):
    write_image(tmp_path / "cat" / "a.png")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("x")
    user_error(str(tmp_path), True, tmp_path, "dog")
    data = open_images(str(tmp_path), labeled=False)
    assert data.class_names == ["cat"] and data.labeled


@pytest.mark.parametrize("labeled", [True, False])
def test_folder_without_images(tmp_path, labeled):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("x")
    user_error(str(tmp_path), labeled, tmp_path, "no images")


@pytest.mark.parametrize("labeled", [True, False])
def test_missing_path(tmp_path, labeled):
    user_error(str(tmp_path / "nowhere"), labeled, tmp_path / "nowhere", "no such file or folder")


def test_a_single_image_is_not_a_source(tmp_path):
    path = write_image(tmp_path / "one.png")
    user_error(path, False, path)


def test_corrupt_files_are_found_and_fail_only_when_loaded(tmp_path):
    write_image(tmp_path / "cat" / "good.png")
    (tmp_path / "cat" / "bad.jpg").write_bytes(b"")
    data = open_images(str(tmp_path), labeled=True)
    assert len(data) == 2
    bad = data.paths.index(str(tmp_path / "cat" / "bad.jpg"))
    with pytest.raises(BadImage, match="bad.jpg"):
        data.load(bad)
    assert data.load(1 - bad).shape == (4, 6, 3)


def test_symlink_loop_is_not_followed_forever(tmp_path):
    write_image(tmp_path / "cat" / "a.png")
    os.symlink(tmp_path / "cat", tmp_path / "cat" / "again")
    data = open_images(str(tmp_path), labeled=True)
    assert len(data) == 1


def test_folder_path_with_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_image(tmp_path / "imgs" / "cat" / "a.png")
    assert len(open_images("~/imgs", labeled=True)) == 1


# ---------------------------------------------------------------- lists

@pytest.fixture
def listed(tmp_path):
    """Images a list can name: two in a sub-folder and one elsewhere (by absolute path)."""
    write_image(tmp_path / "lists" / "imgs" / "1.png")
    write_image(tmp_path / "lists" / "imgs" / "2.jpg")
    write_image(tmp_path / "lists" / "imgs" / "with, comma.png")
    absolute = write_image(tmp_path / "elsewhere" / "3.png")
    return tmp_path / "lists", absolute


def test_csv_with_header(listed):
    folder, absolute = listed
    (folder / "train.csv").write_text(f"path,label\nimgs/1.png,zebra\nimgs/2.jpg,ant\n{absolute},zebra\n"
                                      '"imgs/with, comma.png",ant\n')
    data = open_images(str(folder / "train.csv"), labeled=True)
    assert data.class_names == ["ant", "zebra"]
    assert data.paths == [str(folder / "imgs" / "1.png"), str(folder / "imgs" / "2.jpg"), absolute,
                          str(folder / "imgs" / "with, comma.png")]
    np.testing.assert_array_equal(data.labels, [1, 0, 1, 0])
    assert data.labeled and data.root == str(folder)
    assert data.load(2).shape == (4, 6, 3)


@pytest.mark.parametrize("suffix", [".tsv", ".txt"])
def test_tab_separated_lists_without_header(listed, suffix):
    folder, _ = listed
    (folder / f"train{suffix}").write_text("imgs/1.png\tb\n\nimgs/with, comma.png\ta\n")
    data = open_images(str(folder / f"train{suffix}"), labeled=True)
    assert data.class_names == ["a", "b"]
    np.testing.assert_array_equal(data.labels, [1, 0])


def test_class_indices_sort_names_as_strings(listed):
    folder, _ = listed
    (folder / "l.csv").write_text("imgs/1.png,10\nimgs/2.jpg,9\n")
    data = open_images(str(folder / "l.csv"), labeled=True)
    assert data.class_names == ["10", "9"]
    np.testing.assert_array_equal(data.labels, [0, 1])


def test_path_only_list(listed):
    folder, _ = listed
    (folder / "u.txt").write_text("imgs/1.png\nimgs/2.jpg\n")
    data = open_images(str(folder / "u.txt"), labeled=False)
    np.testing.assert_array_equal(data.labels, [-1, -1])
    assert data.class_names == [] and not data.labeled
    user_error(str(folder / "u.txt"), True, folder / "u.txt", "no label")


def test_partly_labeled_list(listed):
    folder, _ = listed
    (folder / "p.csv").write_text("path,label\nimgs/1.png,cat\nimgs/2.jpg,\n")
    data = open_images(str(folder / "p.csv"), labeled=False)
    np.testing.assert_array_equal(data.labels, [0, -1])
    user_error(str(folder / "p.csv"), True, folder / "p.csv", "line 3")


def test_wrong_number_of_fields_names_the_line(listed):
    folder, _ = listed
    (folder / "w.csv").write_text("path,label\nimgs/1.png,cat\nimgs/2.jpg,dog,extra\n")
    user_error(str(folder / "w.csv"), True, folder / "w.csv", "line 3", "3 comma-separated fields")
    (folder / "v.csv").write_text("imgs/1.png\nimgs/2.jpg,dog\n")
    user_error(str(folder / "v.csv"), False, folder / "v.csv", "line 2")


def test_missing_listed_files_are_named_and_counted(listed):
    folder, _ = listed
    rows = ["imgs/1.png,a"] + [f"imgs/missing{i}.png,a" for i in range(5)]
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    message = user_error(str(folder / "m.csv"), True, folder / "m.csv", "5 file(s)", "missing0.png")
    assert "missing4.png" not in message  # only the first few are shown


def test_empty_list(listed):
    folder, _ = listed
    (folder / "e.csv").write_text("path,label\n")
    user_error(str(folder / "e.csv"), False, folder / "e.csv", "names no images")


# ---------------------------------------------------------------- ImageSet

def test_subset_keeps_classes_and_order(class_folder):
    data = open_images(str(class_folder), labeled=True)
    part = data.subset([6, 0, 3])
    assert part.paths == [data.paths[6], data.paths[0], data.paths[3]]
    np.testing.assert_array_equal(part.labels, [2, 0, 1])
    assert part.class_names == data.class_names and len(part) == 3 and part.root == data.root
    digits = open_images("digits", labeled=True).subset(np.array([4, 2]))
    assert digits.arrays.shape == (2, 8, 8, 3) and digits.describe(0) == "digits[0]"


def test_labeled_property():
    arrays = np.zeros((3, 1, 1, 3), np.uint8)
    assert ImageSet(None, arrays, np.array([0, 1, 0]), ["a", "b"], "m").labeled
    assert not ImageSet(None, arrays, np.array([0, -1, 0]), ["a", "b"], "m").labeled
    assert not ImageSet(None, arrays, np.array([-1, -1, -1]), [], "m").labeled
    with pytest.raises(ValueError):
        ImageSet(None, arrays, np.array([0, 2, 0]), ["a", "b"], "m")
