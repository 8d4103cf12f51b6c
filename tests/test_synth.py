"""The synthetic data set: layout, COCO format, determinism, caption content and mirror consistency."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from PIL import Image
from pycocotools.coco import COCO

from captioner.data.synth import CAPTIONS_PER_IMAGE, SPLITS, describe, generate, names_all_objects

COUNTS = {"train": 6, "val": 3, "test": 3}


def _make(root: Path, seed: int = 0, **counts: int) -> dict[str, Path]:
    counts = counts or COUNTS
    return generate(root, *(counts[s] for s in SPLITS), size=64, seed=seed, progress=False)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _load(paths: dict[str, Path]) -> dict[str, dict]:
    return {split: json.loads(path.read_text()) for split, path in paths.items()}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("synth")
    return root, _make(root)


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Images (with their captions) of a larger run, for statistics over scene kinds."""
    data = _load(_make(tmp_path_factory.mktemp("many"), seed=3, train=80, val=0, test=0))["train"]
    for image in data["images"]:
        image["captions"] = [a["caption"] for a in data["annotations"] if a["image_id"] == image["id"]]
    return data["images"]


def test_layout_and_counts(made: tuple[Path, dict[str, Path]]) -> None:
    root, paths = made
    assert set(paths) == set(SPLITS)
    for split, data in _load(paths).items():
        assert paths[split] == root / "annotations" / f"captions_{split}.json"
        assert set(data) >= {"info", "licenses", "images", "annotations"}
        assert len(data["images"]) == COUNTS[split]
        assert len(data["annotations"]) == COUNTS[split] * CAPTIONS_PER_IMAGE
        names = sorted(i["file_name"] for i in data["images"])
        assert sorted(p.name for p in (root / split).iterdir()) == names
        for image in data["images"]:
            assert image["file_name"] == f"{image['id']:012d}.png"
            assert 1 <= len(image["objects"]) <= 3
            assert all(set(o) == {"shape", "color", "size", "x", "y"} for o in image["objects"])


def test_coco_loads_each_split(made: tuple[Path, dict[str, Path]]) -> None:
    for split, path in made[1].items():
        coco = COCO(str(path))
        assert len(coco.getImgIds()) == COUNTS[split]
        assert all(len(coco.getAnnIds(imgIds=[i])) == CAPTIONS_PER_IMAGE for i in coco.getImgIds())


def test_ids_unique_across_splits(made: tuple[Path, dict[str, Path]]) -> None:
    data = _load(made[1]).values()
    image_ids = [i["id"] for d in data for i in d["images"]]
    ann_ids = [a["id"] for d in data for a in d["annotations"]]
    assert len(set(image_ids)) == len(image_ids) == sum(COUNTS.values())
    assert len(set(ann_ids)) == len(ann_ids)


def test_five_distinct_captions_of_sensible_length(made: tuple[Path, dict[str, Path]]) -> None:
    for data in _load(made[1]).values():
        for image in data["images"]:
            captions = [a["caption"] for a in data["annotations"] if a["image_id"] == image["id"]]
            assert len(captions) == len(set(captions)) == CAPTIONS_PER_IMAGE
            assert all(4 <= len(c.split()) <= 16 for c in captions), captions


def test_images_are_rgb_of_requested_size(made: tuple[Path, dict[str, Path]]) -> None:
    root, paths = made
    for split, data in _load(paths).items():
        for image in data["images"]:
            with Image.open(root / split / image["file_name"]) as im:
                assert (im.mode, im.size) == ("RGB", (64, 64))


def test_same_seed_gives_identical_bytes(made: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    _make(tmp_path)
    assert _hashes(tmp_path) == _hashes(made[0])


def test_different_seeds_differ(made: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    _make(tmp_path, seed=1)
    ours, theirs = _hashes(tmp_path), _hashes(made[0])
    assert ours.keys() == theirs.keys()
    assert all(ours[k] != theirs[k] for k in ours if k.startswith("annotations"))


def test_names_all_objects(many: list[dict]) -> None:
    for image in many:
        objects = image["objects"]
        assert all(names_all_objects(c, objects) for c in image["captions"]), image
        first = objects[0]
        other = "red" if first["color"] != "red" else "blue"
        wrong = image["captions"][0].replace(first["color"] + " ", other + " ")
        assert not names_all_objects(wrong, objects)
    objects = [{"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}]
    assert names_all_objects("A red circle to the left of a blue square", objects)
    assert not names_all_objects("a red circle on the left", objects)
    assert not names_all_objects("a red circle a blue square and a green triangle", objects)


def test_left_right_and_every_kind_of_scene_occur(many: list[dict]) -> None:
    words = {w for image in many for c in image["captions"] for w in c.split()}
    assert {"left", "right", "top", "bottom", "above", "below"} <= words
    assert {len(image["objects"]) for image in many} == {1, 2, 3}


def test_relations_are_unambiguous(many: list[dict]) -> None:
    for image in many:
        xs, ys = ([o[k] for o in image["objects"]] for k in "xy")
        if len(xs) > 1:
            spread = sorted([max(xs) - min(xs), max(ys) - min(ys)])
            assert spread[1] >= 2 * spread[0], image


def test_captions_are_mirror_consistent(many: list[dict]) -> None:
    """Flipping a scene left-right gives the captions with 'left' and 'right' swapped."""
    swap = {"left": "right", "right": "left"}
    for image in many:
        mirrored = [{**o, "x": image["width"] - o["x"]} for o in image["objects"]]
        expected = [re.sub(r"\b(left|right)\b", lambda m: swap[m.group()], c) for c in image["captions"]]
        assert sorted(describe(mirrored, image["width"])) == sorted(expected)


@pytest.mark.parametrize("kwargs, match", [({"n_train": -1}, "n_train"), ({"n_test": -2}, "n_test"),
                                           ({"size": 16}, "size"), ({"seed": -1}, "seed")])
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate(tmp_path, **kwargs, progress=False)
    assert not any(tmp_path.iterdir())
