"""COCO caption metrics: hand-checkable cases, equality with pycocoevalcap on real files, and input errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from captioner.evaluation import metrics as evaluate
from captioner.evaluation.metrics import (
    JavaMissingError,
    format_table,
    load_references,
    load_results,
    score_captions,
    score_columns,
    score_files,
    write_results,
)
from captioner.io import write_json

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java is not installed")

CAPTIONS = {
    1: "a man riding a wave on top of a surfboard.",
    2: "Two dogs are playing with a red frisbee in the park",
    3: "a plate of food with broccoli, rice and a fork",
}
SAME = {i: [c, c, c] for i, c in CAPTIONS.items()}
OTHER = {1: "zebras graze quietly outside", 2: "kitchen sink below window", 3: "clocks tower over city"}


@needs_java
def test_identical_captions_score_one() -> None:
    scores = score_captions(CAPTIONS, SAME, metrics=("Bleu", "ROUGE_L"))  # METEOR: see the fakecap test
    assert scores["Bleu_4"] == pytest.approx(100.0)
    assert scores["ROUGE_L"] == pytest.approx(100.0)


@needs_java
def test_no_overlap_scores_zero_and_metrics_restrict_scorers() -> None:
    scores = score_captions(OTHER, SAME, metrics=("Bleu", "CIDEr"))
    assert set(scores) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"}
    assert scores["Bleu_4"] == pytest.approx(0.0, abs=1e-6)
    assert scores["CIDEr"] == 0.0
    with pytest.raises(ValueError, match="unknown metrics"):
        score_captions(OTHER, SAME, metrics=("BLEU",))


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Meteor]:
    """The METEOR scorers that captioner.evaluation.metrics starts during the test."""
    meteors: list[Meteor] = []

    class RecordingMeteor(Meteor):
        def __init__(self) -> None:
            super().__init__()
            meteors.append(self)

    monkeypatch.setattr(evaluate, "Meteor", RecordingMeteor)
    return meteors


@pytest.fixture(scope="module")
def fakecap(shared: Path) -> tuple[Path, Path]:
    root = shared / "data" / "coco-val2014-captions"
    return root / "captions_val2014_fakecap_results.json", root / "captions_val2014_4refs.json"


@needs_java
def test_score_files_equals_pycocoevalcap_scorers(fakecap: tuple[Path, Path], started: list[Meteor]) -> None:
    results_path, annotations_path = fakecap
    results = json.loads(results_path.read_text())
    ids = {r["image_id"] for r in results}
    res = {r["image_id"]: [{"caption": r["caption"]}] for r in results}
    gts: dict[int, list[dict[str, str]]] = {i: [] for i in ids}
    for ann in json.loads(annotations_path.read_text())["annotations"]:
        if ann["image_id"] in ids:
            gts[ann["image_id"]].append({"caption": ann["caption"]})
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    expected = {f"Bleu_{n}": b for n, b in enumerate(Bleu(4).compute_score(gts, res)[0], 1)}
    meteor = Meteor()
    expected["METEOR"] = meteor.compute_score(gts, res)[0]
    del meteor
    expected["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    expected["CIDEr"] = Cider().compute_score(gts, res)[0]

    scores = score_files(results_path, annotations_path)
    assert scores == pytest.approx({k: 100 * v for k, v in expected.items()}, abs=1e-4)  # the 0-100 scale
    assert len(started) == 1 and started[0].meteor_p.returncode is not None  # its java process has ended
    assert 10 < scores["Bleu_4"] < 25 and 40 < scores["CIDEr"] < 80


@needs_java
def test_score_columns_equals_one_call_per_column_with_one_meteor(started: list[Meteor]) -> None:
    mixed = {**OTHER, 1: CAPTIONS[1]}
    columns = {"same": CAPTIONS, "mixed": mixed, "other": OTHER, "mixed again": mixed}
    together = score_columns(columns, SAME)
    assert list(together) == list(columns)
    assert len(started) == 1 and started[0].meteor_p.returncode is not None  # one java process, ended
    for label, results in columns.items():  # the java-free scorers: one call per column gives the same
        alone = score_captions(results, SAME, metrics=("Bleu", "ROUGE_L", "CIDEr"))
        assert {k: together[label][k] for k in alone} == pytest.approx(alone, abs=1e-9)
    assert together["same"]["METEOR"] > together["mixed"]["METEOR"] > together["other"]["METEOR"] >= 0
    assert together["mixed again"] == together["mixed"]  # the shared process carries nothing between columns


def test_python_tokenizer_path_needs_no_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    with pytest.warns(UserWarning, match="not comparable"):
        scores = score_captions(CAPTIONS, SAME, java=False)
    assert set(scores) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    assert scores["Bleu_4"] == pytest.approx(100.0)
    with pytest.raises(JavaMissingError, match="default-jre-headless"):
        score_captions(CAPTIONS, SAME)
    with pytest.raises(ValueError, match="need java"):
        score_captions(CAPTIONS, SAME, java=False, metrics=("METEOR",))


@needs_java
def test_spice_without_models_warns_and_returns_other_metrics(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(evaluate, "_spice_lib", lambda: tmp_path)
    with pytest.warns(UserWarning, match="SPICE models not found.*SPICE skipped"):
        scores = score_captions(CAPTIONS, SAME, spice=True, metrics=("Bleu",))
    assert "SPICE" not in scores and scores["Bleu_4"] == pytest.approx(100.0)


def _write(tmp_path: Path, name: str, obj: object) -> Path:
    return write_json(tmp_path / name, obj)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"image_id": 1, "caption": "a cat"}, "expected a list"),
        ([{"image_id": 1}], "entry 0 has no image_id/caption"),
        ([{"image_id": "7", "caption": "a cat"}], "non-integer image_id '7'"),
        ([{"image_id": 1, "caption": "a cat"}, {"image_id": 5, "caption": "  "}], "image_id 5 .* empty"),
        ([{"image_id": 9, "caption": "a cat"}, {"image_id": 9, "caption": "a dog"}], "duplicate image_id 9"),
    ],
)
def test_malformed_results_name_file_and_entry(tmp_path: Path, content: object, message: str) -> None:
    path = _write(tmp_path, "res.json", content)
    with pytest.raises(ValueError, match=message) as error:
        load_results(path)
    assert str(path) in str(error.value)


def test_annotation_errors_and_unknown_image_id(tmp_path: Path) -> None:
    bad = _write(tmp_path, "bad.json", {"annotations": []})
    with pytest.raises(ValueError, match="needs 'images' and 'annotations'") as error:
        load_references(bad)
    assert str(bad) in str(error.value)

    captions = [{"id": n, "image_id": 1, "caption": "a cat"} for n in (1, 2)]
    anns = _write(tmp_path, "anns.json", {"images": [{"id": 1}, {"id": 2}], "annotations": captions})
    assert load_references(anns) == {1: ["a cat", "a cat"]}  # image 2 has no captions
    res = write_results(tmp_path / "res.json", {123: "a dog", 1: "a cat"})
    with pytest.raises(ValueError, match=r"1 image ids in results .* not in annotations .*e\.g\. 123"):
        score_files(res, anns)


def test_write_results_is_sorted_coco_format(tmp_path: Path) -> None:
    path = write_results(tmp_path / "out" / "res.json", {3: "c", 1: "a"})
    assert json.loads(path.read_text()) == [{"image_id": 1, "caption": "a"}, {"image_id": 3, "caption": "c"}]
    assert load_results(path) == {1: "a", 3: "c"}


def test_format_table_prints_one_decimal_in_standard_order() -> None:
    table = format_table({"model": {"CIDEr": 58.22, "Bleu_4": 16.33}, "blind": {"Bleu_4": 5.0}})
    lines = table.splitlines()
    assert lines[0] == "| metric | model | blind |"
    assert lines[2] == "| Bleu_4 | 16.3 | 5.0 |"  # standard order: BLEU before CIDEr
    assert lines[3] == "| CIDEr | 58.2 | - |"
