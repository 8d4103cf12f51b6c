"""CIDEr-D on word ids (the SCST reward): equal to pycocoevalcap per caption, rewards, save/load, inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer

from captioner.data.vocab import END, PAD, START, Vocabulary
from captioner.evaluation.metrics import load_references, load_results
from captioner.training.rewards import CiderD, padded, reference_ids

COCO = "data/coco-val2014-captions/captions_val2014_4refs.json"
FAKECAP = "data/coco-val2014-captions/captions_val2014_fakecap_results.json"


def _words(ids: list[int]) -> str:
    """A caption as pycocoevalcap sees it: ids as words, <end> appended (as CiderD does)."""
    return " ".join(map(str, [*ids, END]))


def _pycocoevalcap(refs: list[list[list[int]]], rounds: list[list[list[int]]]) -> np.ndarray:
    """[round, image] pycocoevalcap CIDEr-D, one candidate per image per round (its df is then over ``refs``)."""
    gts = {i: [_words(r) for r in image_refs] for i, image_refs in enumerate(refs)}
    return np.array([Cider().compute_score(gts, {i: [_words(c)] for i, c in enumerate(cands)})[1]
                     for cands in rounds])


def _rounds(refs: list[list[list[int]]], extra: list[list[int]] | None = None) -> list[list[list[int]]]:
    """Candidates per image: another image's reference, its own reference cut short, its own, empty (+ extra)."""
    n = len(refs)
    rounds = [[refs[(i + 1) % n][0] for i in range(n)],
              [refs[i][-1][:-1] for i in range(n)],
              [refs[i][0] for i in range(n)],
              [[] for _ in range(n)]]
    return rounds + ([extra] if extra else [])


def _assert_equal_to_pycocoevalcap(refs: list[list[list[int]]], rounds: list[list[list[int]]]) -> None:
    ours = CiderD.from_references(refs).scores([c for cands in rounds for c in cands], refs,
                                               np.tile(np.arange(len(refs)), len(rounds)))
    expected = _pycocoevalcap(refs, rounds)
    np.testing.assert_allclose(ours.reshape(expected.shape), expected, rtol=0, atol=1e-6)
    assert expected.max() > 1  # the comparison covers real overlaps, not only zeros


@pytest.fixture(scope="module")
def coco(shared) -> tuple[Vocabulary, list[list[list[int]]], list[list[int]]]:
    """Vocabulary, reference ids and fakecap result ids of the first 200 images of the fakecap results."""
    results = load_results(shared / FAKECAP)
    references = load_references(shared / COCO)
    images = list(results)[:200]
    vocab = Vocabulary.build([c for i in images for c in references[i]], threshold=1)
    refs = [reference_ids(vocab, references[i]) for i in images]
    return vocab, refs, [vocab.encode(results[i])[1:-1] for i in images]


@pytest.fixture(scope="module")
def synth(tiny_synth) -> list[list[list[int]]]:
    """Reference ids of the tiny synthetic training split (24 images x 5 captions)."""
    references = load_references(tiny_synth / "annotations" / "captions_train.json")
    vocab = Vocabulary.build([c for caps in references.values() for c in caps], threshold=1)
    return [reference_ids(vocab, caps) for caps in references.values()]


def test_scores_equal_pycocoevalcap_per_caption_on_coco(coco) -> None:
    _, refs, fakecap = coco
    _assert_equal_to_pycocoevalcap(refs, _rounds(refs, fakecap))


def test_scores_equal_pycocoevalcap_per_caption_on_synthetic_captions(synth) -> None:
    _assert_equal_to_pycocoevalcap(synth, _rounds(synth))


def test_training_frequencies_score_other_images_as_pycocoevalcap_does(coco) -> None:
    """Df from images 0-99 scores images 100-199 (equal counts, so pycocoevalcap's ref_len is the same)."""
    _, refs, fakecap = coco
    train, held_out, cands = refs[:100], refs[100:], fakecap[100:]
    counted = CiderScorer()
    for image_refs in train:
        counted += (None, [_words(r) for r in image_refs])
    counted.compute_doc_freq()
    scorer = CiderScorer()
    for cand, image_refs in zip(cands, held_out, strict=True):
        scorer += (_words(cand), [_words(r) for r in image_refs])
    scorer.document_frequency = counted.document_frequency
    expected = np.array(scorer.compute_cider())
    np.testing.assert_allclose(CiderD.from_references(train).scores(cands, held_out), expected, rtol=0, atol=1e-6)


def test_reward_prefers_a_reference_to_an_unrelated_caption_and_a_complete_caption_to_a_cut_one() -> None:
    captions = [["a dog runs on the grass", "a brown dog running on the grass", "the dog is running in a field"],
                ["a plate of food on a table", "a table with a plate of pasta", "food on a white plate"],
                ["a man riding a red bike", "a person rides a bicycle down the street", "a man on a bike"]]
    vocab = Vocabulary.build([c for caps in captions for c in caps], threshold=1)
    refs = [reference_ids(vocab, caps) for caps in captions]
    cider = CiderD.from_references(refs)
    own, unrelated, cut = refs[0][0], refs[1][0], refs[0][0][:-1]  # "a dog runs on the"
    scores = cider.scores([own, unrelated, cut], [refs[0]], [0, 0, 0])
    assert scores[0] > scores[2] > scores[1] >= 0
    assert scores[1] == 0  # its only shared n-grams ("a", "on", "the", <end>) occur in every image


def test_save_load_round_trip_gives_identical_scores(synth, tmp_path) -> None:
    cider = CiderD.from_references(synth)
    path = cider.save(tmp_path / "df" / "cider.npz")
    loaded = CiderD.load(path)
    np.testing.assert_array_equal(loaded.ngrams, cider.ngrams)
    np.testing.assert_array_equal(loaded.document_frequency, cider.document_frequency)
    assert loaded.ref_len == cider.ref_len == np.log(len(synth))
    cands = [refs[0] for refs in synth[1:]] + [synth[0][1]]
    np.testing.assert_array_equal(loaded.scores(cands, synth), cider.scores(cands, synth))
    assert [p.name for p in path.parent.iterdir()] == ["cider.npz"]  # written atomically, no temp file left


def test_load_names_a_missing_or_foreign_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        CiderD.load(tmp_path / "nothing.npz")
    (tmp_path / "vocab.json").write_text('{"itos": []}')
    with pytest.raises(ValueError, match="vocab.json is not a CIDEr-D"):
        CiderD.load(tmp_path / "vocab.json")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz is not a CIDEr-D"):
        CiderD.load(tmp_path / "other.npz")


def test_scores_are_non_negative_for_random_captions(synth) -> None:
    rng = np.random.default_rng(0)
    words = 4 + max(max(map(max, refs)) for refs in synth)
    cands = [rng.integers(END + 1, words, rng.integers(0, 15)).tolist() for _ in range(200)]
    scores = CiderD.from_references(synth).scores(cands, synth, rng.integers(0, len(synth), 200))
    assert scores.shape == (200,) and np.all(scores >= 0)


def test_document_frequency_counts_images_not_references() -> None:
    a, b = [4, 5, 6], [7, 8]
    once = CiderD.from_references([[a], [b]])
    twice = CiderD.from_references([[a, a], [b]])  # a duplicated reference inside one image
    np.testing.assert_array_equal(twice.ngrams, once.ngrams)
    np.testing.assert_array_equal(twice.document_frequency, once.document_frequency)
    assert set(CiderD.from_references([[a], [a], [b]]).document_frequency) == {1, 2, 3}  # a's, <end>'s


def test_from_references_in_chunks_counts_the_same(synth) -> None:
    whole, chunked = CiderD.from_references(synth), CiderD.from_references(synth, chunk=5)
    np.testing.assert_array_equal(chunked.ngrams, whole.ngrams)
    np.testing.assert_array_equal(chunked.document_frequency, whole.document_frequency)


def test_candidates_stop_at_end_and_may_be_a_padded_tensor(synth) -> None:
    cider = CiderD.from_references(synth)
    cands = [synth[0][0], synth[1][0][:3], []]
    expected = cider.scores(cands, synth[:3])
    width = max(map(len, cands)) + 2
    padded = torch.full((3, width), PAD)
    for row, c in enumerate(cands):
        padded[row, :len(c) + 1] = torch.tensor([*c, END])
    np.testing.assert_array_equal(cider.scores(padded, synth[:3]), expected)
    np.testing.assert_array_equal(cider.scores([[*c, END, 9, 9] for c in cands], synth[:3]), expected)


def test_a_row_without_end_is_scored_cut_short_as_pycocoevalcap_scores_it_without_end(synth) -> None:
    """A sampled caption that reached max_len never chose <end>: it gets none (ruotianluo's array_to_str), so it
    scores below the same words that ended, whether the row stops at its width or at <pad>."""
    cider = CiderD.from_references(synth)
    words = [refs[0] for refs in synth]
    width = max(map(len, words))
    cut = np.full((len(words), width), PAD)
    for row, ids in enumerate(words):
        cut[row, :len(ids)] = ids
    gts = {i: [_words(r) for r in refs] for i, refs in enumerate(synth)}
    expected = Cider().compute_score(gts, {i: [" ".join(map(str, ids))] for i, ids in enumerate(words)})[1]
    np.testing.assert_allclose(cider.scores(cut, synth), expected, rtol=0, atol=1e-6)
    ended = cider.scores(words, synth)
    assert np.all(cider.scores(cut, synth) < ended) and ended.min() > 1
    longest = int(np.argmax(list(map(len, words))))
    full = torch.tensor([words[longest]])  # as wide as its words: the row ends without <end>
    np.testing.assert_allclose(cider.scores(full, synth[longest:longest + 1]), expected[longest], rtol=0, atol=1e-6)


def test_padded_marks_the_end_of_captions_shorter_than_max_len_only() -> None:
    rows = padded([[5, 6], [5, 6, 7], []], 3)
    np.testing.assert_array_equal(rows, [[5, 6, END], [5, 6, 7], [END, PAD, PAD]])


def test_scores_reject_bad_input(synth) -> None:
    cider = CiderD.from_references(synth)
    with pytest.raises(ValueError, match="<start>"):
        cider.scores([[START, *synth[0][0]]], synth[:1])
    with pytest.raises(ValueError, match="2 candidates but 1 image"):
        cider.scores([[4], [5]], synth, [0])
    with pytest.raises(ValueError, match="at least one reference"):
        cider.scores([[4]], [[]])
    with pytest.raises(ValueError, match="at least one reference"):
        cider.scores([[4]], synth, [len(synth)])
    assert cider.scores([], synth[:0]).shape == (0,)
