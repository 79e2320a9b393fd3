"""Protocol rules on top of a dataset: the few-shot draw (KaiyangZhou/Dassl.pytorch @c61a1b5
`DatasetBase.generate_fewshot_dataset`, as CoOp's dataset readers call it) and the base-to-new class split
(KaiyangZhou/CoOp @ff61507 `datasets/oxford_pets.py` `OxfordPets.subsample_classes`: sorted labels, the
first ceil(n/2) are base, each half relabelled from 0; the protocol of Zhou et al., CoCoOp, CVPR 2022)."""

import json
from collections import Counter
from pathlib import Path

import pytest

from clipfit.data import DatasetSplits, Sample, classes_short_of, fewshot, fewshot_cache_file, subsample_classes
from clipfit.errors import DataError


def make_splits(root: Path, n_classes: int = 5, per_class: int = 10, name: str = "toy") -> DatasetSplits:
    """A dataset in memory: paths under root (never opened), ``per_class`` train/val/test images each."""
    classnames = [f"class {i}" for i in range(n_classes)]

    def split(kind):
        return [
            Sample(root / kind / f"c{c}" / f"{i}.png", c, classnames[c])
            for c in range(n_classes)
            for i in range(per_class)
        ]

    return DatasetSplits(name, classnames, "a photo of a {}.", split("train"), split("val"), split("test"),
                         root / "split_fewshot")


def per_class(samples):
    return Counter(s.label for s in samples)


@pytest.mark.parametrize("shots", [1, 2, 4, 8])
def test_fewshot_draws_exactly_k_train_images_per_class(tmp_path, shots):
    out = fewshot(make_splits(tmp_path), shots, seed=1)
    assert per_class(out.train) == {c: shots for c in range(5)}
    assert len(set(out.train)) == len(out.train)


def test_fewshot_draw_comes_from_the_train_split(tmp_path):
    splits = make_splits(tmp_path)
    out = fewshot(splits, 4, seed=1)
    assert set(out.train) <= set(splits.train)
    assert set(out.val) <= set(splits.val)


def test_fewshot_is_deterministic_per_seed(tmp_path):
    splits = make_splits(tmp_path)
    assert fewshot(splits, 4, seed=2).train == fewshot(splits, 4, seed=2).train
    assert fewshot(splits, 4, seed=2).val == fewshot(splits, 4, seed=2).val


def hand_split(root: Path) -> DatasetSplits:
    """Train rows a0 b0 a1 b1 a2 c0 b2 (a: label 1, b: label 0, c: label 2, one image); val vb0 va0 vb1 va1 vb2 va2."""
    names = ["b", "a", "c"]

    def sample(name):  # "a0" and "va0" are images of class "a"
        return Sample(root / f"{name}.png", names.index(name[-2]), name[-2])

    train = [sample(n) for n in ["a0", "b0", "a1", "b1", "a2", "c0", "b2"]]
    val = [sample(n) for n in ["vb0", "va0", "vb1", "va1", "vb2", "va2"]]
    return DatasetSplits("hand", names, "{}", train, val, [], None)


def test_fewshot_draw_is_dassls_one_stream_in_order_of_first_appearance(tmp_path):
    # Worked out from Dassl's rule for seed 1, K = 2. Classes in order of first appearance in the
    # train list: a (label 1), then b (label 0), then c (label 2). One stream, random.seed(1):
    #   random.sample([a0, a1, a2], 2) = [a0, a2]; random.sample([b0, b1, b2], 2) = [b1, b0];
    #   c has one image, fewer than K: kept whole, and no number is drawn for it.
    # Val continues the same stream with min(K, 4) = 2, b first (vb0 is the first val row):
    #   random.sample([vb0, vb1, vb2], 2) = [vb1, vb2]; random.sample([va0, va1, va2], 2) = [va1, va2].
    out = fewshot(hand_split(tmp_path), 2, seed=1)
    assert [s.path.stem for s in out.train] == ["a0", "a2", "b1", "b0", "c0"]
    assert [s.path.stem for s in out.val] == ["vb1", "vb2", "va1", "va2"]
    # Val drawn from a fresh stream would give [vb0, vb2] [va1, va0]: the stream really is shared.


def test_fewshot_draw_depends_on_the_split_files_row_order_as_dassls_does(tmp_path):
    splits = make_splits(tmp_path)
    shuffled = make_splits(tmp_path)
    shuffled.train.reverse()
    assert fewshot(splits, 4, seed=1).train != fewshot(shuffled, 4, seed=1).train


def test_fewshot_differs_across_seeds(tmp_path):
    splits = make_splits(tmp_path)
    draws = {frozenset(fewshot(splits, 4, seed=s).train) for s in (1, 2, 3)}
    assert len(draws) == 3


@pytest.mark.parametrize("shots, val_per_class", [(1, 1), (2, 2), (4, 4), (8, 4), (16, 4)])
def test_fewshot_val_is_min_k_4_per_class(tmp_path, shots, val_per_class):
    out = fewshot(make_splits(tmp_path, per_class=16), shots, seed=1)
    assert per_class(out.val) == {c: val_per_class for c in range(5)}


def test_fewshot_leaves_test_untouched(tmp_path):
    splits = make_splits(tmp_path)
    assert fewshot(splits, 2, seed=1).test == splits.test


@pytest.mark.parametrize("shots", [0, -1, None])
def test_fewshot_zero_or_none_shots_keeps_every_image(tmp_path, shots):
    splits = make_splits(tmp_path)
    out = fewshot(splits, shots, seed=1)
    assert out.train == splits.train and out.val == splits.val and out.test == splits.test


def test_fewshot_class_with_fewer_images_than_shots_keeps_all_it_has(tmp_path):
    splits = make_splits(tmp_path, n_classes=3, per_class=6)
    splits.train = [s for s in splits.train if s.label != 1 or s.path.stem in ("0", "1", "2")]
    out = fewshot(splits, 4, seed=1, cache_dir=tmp_path / "split_fewshot")
    assert per_class(out.train) == {0: 4, 1: 3, 2: 4}
    assert [s for s in out.train if s.label == 1] == [s for s in splits.train if s.label == 1]  # list order, undrawn
    assert classes_short_of(splits, 4) == [("class 1", 3)]
    assert fewshot(splits, 4, seed=1, cache_dir=tmp_path / "split_fewshot") == out  # the cache accepts it


def test_fewshot_cache_drawn_by_the_old_sampler_is_redrawn_not_reused(tmp_path):
    splits = make_splits(tmp_path)
    cache = tmp_path / "split_fewshot"
    expected = fewshot(splits, 2, seed=1)
    path = fewshot_cache_file(cache, 2, 1)
    cache.mkdir()
    old_rows = [
        [s.path.relative_to(tmp_path).as_posix(), s.label, s.classname]
        for s in splits.train
        if s.path.stem in ("0", "1")
    ]
    path.write_text(json.dumps({"format": "clipfit-fewshot/1", "dataset": "toy", "shots": 2, "seed": 1,
                                "classnames": splits.classnames, "train": old_rows, "val": []}))
    with pytest.warns(UserWarning, match=r"shot_2-seed_1\.json was drawn by an older version of the sampler"):
        out = fewshot(splits, 2, seed=1, cache_dir=cache)
    assert out.train == expected.train
    assert json.loads(path.read_text())["format"] == "clipfit-fewshot/2"


def test_fewshot_draw_is_cached_and_reread_identically(tmp_path):
    splits = make_splits(tmp_path)
    cache = tmp_path / "split_fewshot"
    first = fewshot(splits, 4, seed=1, cache_dir=cache)
    path = fewshot_cache_file(cache, 4, 1)
    assert path == cache / "shot_4-seed_1.json" and path.is_file()
    assert fewshot(splits, 4, seed=1, cache_dir=cache) == first
    # The file, not a fresh draw, is what is re-read: swap one cached image for another of its class.
    data = json.loads(path.read_text())
    row = data["train"][0]
    unused = next(
        s for s in splits.train
        if s.label == row[1] and s.path.relative_to(tmp_path).as_posix() not in {r[0] for r in data["train"]}
    )
    data["train"][0] = [unused.path.relative_to(tmp_path).as_posix(), unused.label, unused.classname]
    path.write_text(json.dumps(data))
    again = fewshot(splits, 4, seed=1, cache_dir=cache)
    assert again.train[0] == unused and again.train[1:] == first.train[1:]


def test_fewshot_cache_stores_paths_relative_to_the_dataset_folder(tmp_path):
    splits = make_splits(tmp_path)
    fewshot(splits, 1, seed=1, cache_dir=tmp_path / "split_fewshot")
    data = json.loads((tmp_path / "split_fewshot" / "shot_1-seed_1.json").read_text())
    assert all(not Path(r[0]).is_absolute() and r[0].startswith("train/") for r in data["train"])
    assert [p.name for p in (tmp_path / "split_fewshot").iterdir()] == ["shot_1-seed_1.json"]  # no temp file left


def test_fewshot_cache_that_no_longer_matches_the_dataset_raises(tmp_path):
    cache = tmp_path / "split_fewshot"
    splits = make_splits(tmp_path)
    drawn = fewshot(splits, 4, seed=1, cache_dir=cache).train
    splits.train.remove(drawn[0])  # the dataset changed: a cached image is no longer in it
    message = r"shot_4-seed_1\.json does not match dataset 'toy'.*not in the dataset's train split"
    with pytest.raises(DataError, match=message):
        fewshot(splits, 4, seed=1, cache_dir=cache)


def test_fewshot_cache_of_another_dataset_raises(tmp_path):
    cache = tmp_path / "split_fewshot"
    fewshot(make_splits(tmp_path, name="a"), 2, seed=1, cache_dir=cache)
    with pytest.raises(DataError, match=r"shot_2-seed_1\.json does not match dataset 'b': dataset is 'a'"):
        fewshot(make_splits(tmp_path, name="b"), 2, seed=1, cache_dir=cache)


def test_corrupt_fewshot_cache_raises_naming_the_file(tmp_path):
    cache = tmp_path / "split_fewshot"
    cache.mkdir()
    fewshot_cache_file(cache, 2, 1).write_text("{not json")
    with pytest.raises(DataError, match=r"shot_2-seed_1\.json cannot be read"):
        fewshot(make_splits(tmp_path), 2, seed=1, cache_dir=cache)


def test_base_new_split_gives_base_the_first_ceil_half_with_odd_class_count(tmp_path):
    splits = make_splits(tmp_path, n_classes=5, per_class=2)
    base, new = subsample_classes(splits, "base"), subsample_classes(splits, "new")
    assert base.classnames == ["class 0", "class 1", "class 2"]
    assert new.classnames == ["class 3", "class 4"]
    for split in ("train", "val", "test"):
        assert len(getattr(base, split)) + len(getattr(new, split)) == len(getattr(splits, split))


def test_base_new_split_relabels_each_half_from_zero(tmp_path):
    splits = make_splits(tmp_path, n_classes=5, per_class=2)
    for which, n in (("base", 3), ("new", 2)):
        half = subsample_classes(splits, which)
        for split in (half.train, half.val, half.test):
            assert sorted({s.label for s in split}) == list(range(n))


def test_base_new_split_classnames_follow_the_labels(tmp_path):
    splits = make_splits(tmp_path, n_classes=5, per_class=2)
    for which in ("base", "new"):
        half = subsample_classes(splits, which)
        assert all(half.classnames[s.label] == s.classname for s in half.train + half.val + half.test)
    new = subsample_classes(splits, "new")
    assert {s.path.parent.name for s in new.test if s.label == 0} == {"c3"}


def test_base_new_all_keeps_every_class(tmp_path):
    splits = make_splits(tmp_path, n_classes=5, per_class=2)
    assert subsample_classes(splits, "all") == splits


def test_base_new_unknown_choice_raises(tmp_path):
    from clipfit.errors import ClipFitError

    with pytest.raises(ClipFitError, match="'half'"):
        subsample_classes(make_splits(tmp_path), "half")  # type: ignore[arg-type]
