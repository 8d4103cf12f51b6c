"""The lean search: beam search against a plain beam run to max_len (the stopping bound is exact), the packed-weight
search step against the training step (brute-force search tests are in test_model.py); the search controls (n-gram
blocking, bad endings, sampling) on hand-made decoders, and the ONNX runner's numpy search against decode's."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from captioner.data.endings import bad_ending_words
from captioner.data.vocab import END, SPECIALS, START, Vocabulary
from captioner.models.config import ModelConfig
from captioner.models.families import DECODERS, create_decoder
from captioner.search import Search
from captioner.search.decode import NEVER, Decoder, beam_search, greedy, repeats, sample, sample_captions, search
from captioner.search.hypotheses import normalise

VOCAB, FEATURES = 10, 6  # 4 specials + 6 words


def decoder(family: str, end_bias: float = 0.0, seed: int = 0, layers: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = ModelConfig(VOCAB, family, grid=2, embed_size=8, hidden_size=16, num_layers=layers, attention_size=8,
                         context_size=8)
    d = create_decoder(family, config, FEATURES).eval()
    with torch.no_grad():
        d.out.weight.mul_(4)  # peaked distributions: no near-ties between candidates
        d.out.bias[END] += end_bias
    return d


@torch.no_grad()
def log_probs(d: torch.nn.Module, state: tuple, token: int) -> tuple[list[float], tuple]:
    lp, state, _ = d.step(torch.tensor([token]), state)
    lp[0, list(NEVER)] = float("-inf")
    return lp[0].tolist(), state


def plain_beam(d: torch.nn.Module, features: torch.Tensor, k: int, max_len: int,
               alpha: float) -> list[tuple[list[int], float]]:
    """Beam search without early stopping on one image: every ended caption is offered, the k best returned."""
    beams, ended = [([], 0.0, d.start(features))], []
    for _ in range(max_len):
        grown = []
        for ids, score, state in beams:
            lp, state = log_probs(d, state, ids[-1] if ids else START)
            if ids:  # a caption has at least one word
                ended.append((ids, score + lp[END]))
            grown += [(ids + [w], score + lp[w], state) for w in range(VOCAB) if w != END and lp[w] > float("-inf")]
        beams = sorted(grown, key=lambda b: -b[1])[:k]
    ended += [(ids, score) for ids, score, _ in beams]
    return sorted(ended, key=lambda c: -normalise(c[1], len(c[0]), alpha))[:k]


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize(("beam", "alpha", "end_bias"), [(2, 0.0, 0.0), (3, 0.0, 2.0), (3, 1.0, -2.0), (5, 0.6, 0.0)])
def test_beam_equals_a_plain_beam_run_to_max_len(family: str, beam: int, alpha: float, end_bias: float) -> None:
    d = decoder(family, end_bias)
    features = torch.randn(3, 4, FEATURES)
    for image, row in zip(features, beam_search(d, features, beam, 6, alpha), strict=True):
        expected = plain_beam(d, image[None], beam, 6, alpha)
        assert [h.ids for h in row] == [ids for ids, _ in expected]
        assert [h.log_prob for h in row] == pytest.approx([s for _, s in expected], abs=1e-4)
        assert [h.score for h in row] == pytest.approx([normalise(s, len(ids), alpha) for ids, s in expected],
                                                       abs=1e-4)


@pytest.mark.parametrize(("family", "layers"), [("show-tell", 2), *((f, 1) for f in DECODERS)])
@pytest.mark.parametrize("rows", [1, 3])  # one row and several take different fast products
def test_search_step_matches_the_training_step(family: str, layers: int, rows: int) -> None:
    d = decoder(family, layers=layers)
    features, captions = torch.randn(rows, 4, FEATURES), torch.randint(4, VOCAB, (rows, 6))
    captions[:, 0] = START
    teacher = d.out(d(features, captions)[0]).log_softmax(-1)

    def steps(d: torch.nn.Module) -> torch.Tensor:
        state, out = d.start(features), []
        for t in range(5):
            lp, state, _ = d.step(captions[:, t], state)
            out.append(lp)
        return torch.stack(out, 1)

    with torch.no_grad():
        assert torch.allclose(steps(d), teacher, atol=1e-5)
        d.out.weight.add_(0.5)  # an in-place update (an optimizer step, load_state_dict) renews the packed weights
        fast = steps(d)
        twin = copy.deepcopy(d)  # a copy packs its own
        assert torch.equal(steps(twin), fast)
    assert torch.allclose(fast, steps(d), atol=1e-5)  # with autograd: the live parameters


@pytest.mark.parametrize("family", DECODERS)
def test_int8_search_stays_close_to_float32_and_switches_back(family: str) -> None:
    d = decoder(family)
    features, captions = torch.randn(8, 4, FEATURES), torch.randint(4, VOCAB, (8, 6))
    captions[:, 0] = START

    def run() -> tuple[torch.Tensor, list[list[int]]]:
        state, out = d.start(features), []
        for t in range(5):
            lp, state, _ = d.step(captions[:, t], state)
            out.append(lp)
        return torch.stack(out, 1), [h.ids for row in beam_search(d, features, 3, 6, 0.0) for h in row]

    with torch.no_grad():
        exact, beams = run()
        d.affines.int8 = True
        int8, int8_beams = run()
        d.affines.int8 = False
        assert torch.equal(run()[0], exact)  # switched back: the float32 layout again
    assert not torch.equal(int8, exact)  # the int8 products did run
    assert (int8 - exact).abs().max() < 0.02 * (exact.max() - exact.min())  # within int8's rounding
    assert int8_beams == beams  # peaked distributions: the same captions


@pytest.mark.parametrize("family", DECODERS)
def test_a_caption_has_a_word_even_when_the_model_would_end_at_once(family: str) -> None:
    """An undertrained model may rank <end> first at the first step: every search still returns one word (the best
    first word), then ends."""
    d = decoder(family, end_bias=30.0)
    features = torch.randn(3, 4, FEATURES)
    with torch.no_grad():
        lp, _, _ = d.step(torch.full((3,), START), d.start(features))
    assert (lp.argmax(1) == END).all()
    lp[:, [*NEVER, END]] = float("-inf")
    best_first = lp.argmax(1).tolist()
    assert [h.ids for h in greedy(d, features, 6)] == [[w] for w in best_first]
    assert [row[0].ids for row in beam_search(d, features, 3, 6)] == [[w] for w in best_first]
    ids, _ = sample(d, features, 4, 6)
    assert (ids[:, 0] != END).all() and (ids[:, 1] == END).all()


class Chain:
    """A hand-made decoder whose next word depends on the last one only: ``table[prev][next]`` probabilities by name
    (<start>, <end> included); a word not listed gets 1e-6 before the row is normalised."""

    def __init__(self, table: dict[str, dict[str, float]]) -> None:
        names = {w for prev, row in table.items() for w in (prev, *row)} - set(SPECIALS)
        self.itos = [*SPECIALS, *sorted(names)]
        stoi = {w: i for i, w in enumerate(self.itos)}
        probs = torch.full((len(self.itos), len(self.itos)), 1e-6)
        for prev, row in table.items():
            for word, p in row.items():
                probs[stoi[prev], stoi[word]] = p
        self.table = (probs / probs.sum(1, keepdim=True)).log()

    def start(self, features: torch.Tensor) -> tuple[torch.Tensor]:
        return (features.new_zeros(features.size(0), 1),)

    def step(self, tokens: torch.Tensor, state: tuple[torch.Tensor]) -> tuple[torch.Tensor, tuple, None]:
        return self.table[tokens], state, None

    def text(self, ids: list[int]) -> str:
        return " ".join(self.itos[i] for i in ids)


# raw log-probability: "a dog" (0.5) beats "a dog runs on grass" (0.45 * 0.95 * 0.95 * 0.97 = 0.39); per GNMT
# length penalty 1 the long one wins (-0.559 vs -0.594)
SHORT_OR_LONG = Chain({"<start>": {"a": 1}, "a": {"dog": 1}, "dog": {"<end>": 0.5, "runs": 0.45, "on": 0.05},
                       "runs": {"on": 0.95, "<end>": 0.05}, "on": {"grass": 0.95, "<end>": 0.05},
                       "grass": {"<end>": 0.97, "on": 0.03}})
ONE_IMAGE = torch.zeros(1, 1, 1)


def test_beam_alternatives_report_the_score_they_are_ordered_by_and_their_log_probability() -> None:
    """Issue 21 item 17: with a length penalty the list was ordered by normalised score but reported the raw one,
    so down a best-first list the score rose."""
    row = beam_search(SHORT_OR_LONG, ONE_IMAGE, beam=3, max_len=8, length_penalty=1.0)[0]
    assert [SHORT_OR_LONG.text(h.ids) for h in row[:2]] == ["a dog runs on grass", "a dog"]
    assert [h.score for h in row] == sorted((h.score for h in row), reverse=True)
    for h in row:
        assert h.score == pytest.approx(normalise(h.log_prob, len(h.ids), 1.0), abs=1e-6)
    assert row[0].log_prob == pytest.approx(float(torch.tensor(0.45 * 0.95 * 0.95 * 0.97).log()), abs=1e-4)
    assert row[1].log_prob == pytest.approx(float(torch.tensor(0.5).log()), abs=1e-4)


def numpy_step(d: Decoder) -> object:
    """A torch decoder as the ONNX runner sees its graphs: numpy in and out, the specials ruled out as its step does."""
    def step(tokens: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None]:
        with torch.no_grad():
            lp, new, alpha = d.step(torch.from_numpy(tokens), tuple(torch.from_numpy(s) for s in state))
        lp = lp.numpy().copy()
        lp[:, list(NEVER)] = -np.inf
        lp[tokens == START, END] = -np.inf
        return lp, [s.numpy() for s in new], None if alpha is None else alpha.numpy()
    return step


def run(impl: str, d: Decoder, features: torch.Tensor, beam: int = 1, max_len: int = 8, alpha: float = 0.0,
        sampling: dict | None = None, **rules) -> list[list[tuple[list[int], float, float]]]:
    """Each image's captions (ids, score, log-probability) from decode (``torch``) or the ONNX runner's numpy search."""
    if impl == "torch":
        if sampling is not None:
            rows = sample_captions(d, features, max_len=max_len, **sampling, **rules)
        elif beam == 1:
            rows = [[h] for h in greedy(d, features, max_len, **rules)]
        else:
            rows = beam_search(d, features, beam, max_len, alpha, **rules)
        return [[(h.ids, h.score, h.log_prob) for h in row] for row in rows]
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install captioner[onnx])")
    from captioner.export import runner as onnx_runner

    step = numpy_step(d)
    with torch.no_grad():
        state = [s.numpy() for s in d.start(features)]
    if sampling is not None:
        rows = onnx_runner.sample(step, state, len(features), max_len=max_len, **sampling, **rules)
    elif beam == 1:
        rows = [[h] for h in onnx_runner.greedy(step, state, len(features), max_len, **rules)]
    else:  # every state entry reordered: those a step leaves alone hold k equal rows per image
        rows = onnx_runner.beam_search(step, state, list(range(len(state))), len(features), beam, max_len, alpha,
                                       **rules)
    return [[(ids, score, lp) for ids, score, _, lp in row] for row in rows]


IMPLS = ["torch", "numpy"]
SEARCHES = [dict(beam=1), dict(beam=3), dict(sampling=dict(n=4, seed=0))]


def grams(ids: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


# greedy says "a black shirt and a black shirt and ..." (a -> black 0.6, shirt -> and 0.6)
REPEATER = Chain({"<start>": {"a": 1}, "a": {"black": 0.6, "man": 0.4}, "black": {"shirt": 0.7, "hat": 0.3},
                  "shirt": {"and": 0.6, "<end>": 0.4}, "and": {"a": 1}, "hat": {"<end>": 1}, "man": {"<end>": 1}})


@pytest.mark.parametrize("impl", IMPLS)
def test_block_ngram_rules_out_a_word_that_would_repeat_an_ngram(impl: str) -> None:
    text = [REPEATER.text(ids) for ((ids, _, _),) in run(impl, REPEATER, ONE_IMAGE, max_len=12)]
    assert text == ["a black shirt and a black shirt and a black shirt and"]
    for n, expected in ((3, "a black shirt and a black hat"), (2, "a black shirt and a man")):
        ((ids, score, _),) = run(impl, REPEATER, ONE_IMAGE, max_len=12, block_ngram=n)[0]
        assert REPEATER.text(ids) == expected
        assert score == pytest.approx(float(REPEATER.table[[START, *ids], [*ids, END]].sum()), abs=1e-5)
    for kind in SEARCHES:
        for row in run(impl, REPEATER, ONE_IMAGE.repeat(2, 1, 1), max_len=12, block_ngram=3, **kind):
            assert row and all(len(set(grams(ids, 3))) == len(grams(ids, 3)) for ids, _, _ in row)


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_search_repeats_an_ngram_when_blocked(family: str, n: int) -> None:
    d, features = decoder(family, end_bias=-30.0), torch.randn(4, 4, FEATURES)  # 8 of 6 words: they repeat
    plain = [ids for row in run("torch", d, features, beam=3) for ids, _, _ in row]
    assert any(len(set(grams(ids, n))) < len(grams(ids, n)) for ids in plain)
    for kind in SEARCHES:
        for row in run("torch", d, features, block_ngram=n, **kind):
            assert all(len(set(grams(ids, n))) == len(grams(ids, n)) for ids, _, _ in row)


def test_repeats_marks_each_word_that_completes_a_seen_ngram() -> None:
    words = torch.tensor([[4, 5, 6, 4, 5], [4, 5, 6, 7, 5]])
    assert repeats(words, 3, 10).nonzero().tolist() == [[0, 6]]  # "4 5" was followed by 6
    assert repeats(words, 2, 10).nonzero().tolist() == [[0, 6], [1, 6]]  # "5" was followed by 6
    assert repeats(words, 1, 10).nonzero().tolist() == [[0, w] for w in (4, 5, 6)] + [[1, w] for w in (4, 5, 6, 7)]


# greedy says "a dog on" (on -> <end> 0.7), then with the rule "a dog on the grass" (the -> <end> 0.8 ruled out too)
ENDS_BADLY = Chain({"<start>": {"a": 1}, "a": {"dog": 1}, "dog": {"on": 0.6, "<end>": 0.4},
                    "on": {"<end>": 0.7, "the": 0.3}, "the": {"<end>": 0.8, "grass": 0.2}, "grass": {"<end>": 1}})


@pytest.mark.parametrize("impl", IMPLS)
def test_no_caption_ends_on_a_function_word_with_bad_endings(impl: str) -> None:
    vocab = Vocabulary(ENDS_BADLY.itos)
    bad = vocab.bad_ending_ids()
    assert sorted(vocab.itos[i] for i in bad) == ["a", "on", "the"]
    ((ids, _, _),) = run(impl, ENDS_BADLY, ONE_IMAGE)[0]
    assert ENDS_BADLY.text(ids) == "a dog on"
    ((ids, _, _),) = run(impl, ENDS_BADLY, ONE_IMAGE, bad_endings=bad)[0]
    assert ENDS_BADLY.text(ids) == "a dog on the grass"
    ((ids, _, _),) = run(impl, ENDS_BADLY, ONE_IMAGE, max_len=3, bad_endings=bad)[0]
    assert ENDS_BADLY.text(ids) == "a dog"  # cut at max_len, it would end on "on"
    for kind in SEARCHES:
        rows = run(impl, ENDS_BADLY, ONE_IMAGE.repeat(2, 1, 1), bad_endings=bad, **kind)
        assert all(ids[-1] not in bad for row in rows for ids, _, _ in row)
        assert any(ids[-1] in bad for row in run(impl, ENDS_BADLY, ONE_IMAGE, **kind) for ids, _, _ in row)


def test_the_bad_endings_are_data_looked_up_in_the_vocabulary() -> None:
    words = bad_ending_words("en")
    assert {"a", "an", "the", "of", "with", "in", "on", "and"} <= set(words) and "dog" not in words
    assert Vocabulary([*SPECIALS, "dog", "the", "runs"]).bad_ending_ids() == [5]
    with pytest.raises(ValueError, match="no bad-endings list for language 'xx'"):
        bad_ending_words("xx")


@pytest.mark.parametrize("impl", IMPLS)
def test_length_normalisation_keeps_beam_from_the_two_word_caption_raw_log_probability_picks(impl: str) -> None:
    """Issue 20: on real photos beam search collapsed to two-word captions ("a man")."""
    ((greedy_ids, _, _),) = run(impl, SHORT_OR_LONG, ONE_IMAGE)[0]
    raw = run(impl, SHORT_OR_LONG, ONE_IMAGE, beam=3, alpha=0.0)[0]
    normalised = run(impl, SHORT_OR_LONG, ONE_IMAGE, beam=3, alpha=1.0)[0]
    assert SHORT_OR_LONG.text(greedy_ids) == SHORT_OR_LONG.text(raw[0][0]) == "a dog"
    assert SHORT_OR_LONG.text(normalised[0][0]) == "a dog runs on grass"
    assert normalised[0][2] < raw[0][2]  # it is the less likely caption, per word the likelier


@pytest.mark.parametrize("family", DECODERS)
def test_the_same_seed_gives_the_same_captions_whatever_the_batch(family: str) -> None:
    d, features = decoder(family), torch.randn(3, 4, FEATURES)
    kw = dict(n=5, max_len=8, temperature=1.5, seed=7)
    first = sample_captions(d, features, **kw)
    again = sample_captions(d, features, **kw)
    assert [[h.ids for h in row] for row in first] == [[h.ids for h in row] for row in again]
    assert [h.ids for h in first[2]] == [h.ids for h in sample_captions(d, features[2:], **kw)[0]]
    assert [[h.ids for h in row] for row in first] != [[h.ids for h in row] for row in
                                                       sample_captions(d, features, **kw | dict(seed=8))]
    assert all(len({tuple(h.ids) for h in row}) > 1 for row in first)  # temperature 1.5: a spread of captions
    for row in first:
        assert [h.score for h in row] == sorted((h.score for h in row), reverse=True)
    ids, log_probs = sample(d, features, 5, 8, temperature=1.5, seed=7)  # SCST's sampler: the same draws
    assert log_probs.requires_grad
    assert sorted(first[0], key=lambda h: -h.score)[0].ids in [row[:row.index(END)] if END in row else row
                                                             for row in ids[:5].tolist()]


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("rules", [{}, dict(block_ngram=2, bad_endings=[4, 5])])
def test_sampling_as_temperature_goes_to_zero_is_greedy(family: str, rules: dict) -> None:
    d, features = decoder(family), torch.randn(6, 4, FEATURES)
    expected = [(h.ids, h.score) for h in greedy(d, features, 8, **rules)]
    for kw in (dict(temperature=1e-4), dict(top_k=1), dict(top_p=1e-6)):
        for seed in (0, None):
            rows = sample_captions(d, features, n=3, max_len=8, seed=seed, **kw, **rules)
            assert [[h.ids for h in row] for row in rows] == [[ids] * 3 for ids, _ in expected]
            assert [row[0].score for row in rows] == pytest.approx([s for _, s in expected], abs=1e-5)


FIRST_WORD = Chain({"<start>": {"a": 0.5, "b": 0.3, "c": 0.2}, "a": {"<end>": 1}, "b": {"<end>": 1},
                    "c": {"<end>": 1}})


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("kw", "words"), [({}, "abc"), (dict(top_k=2), "ab"), (dict(top_p=0.6), "ab"),
                                           (dict(top_p=0.5), "a"), (dict(top_k=2, top_p=0.6), "a")])
def test_top_k_and_top_p_draw_only_the_likeliest_words(impl: str, kw: dict, words: str) -> None:
    rows = run(impl, FIRST_WORD, ONE_IMAGE, sampling=dict(n=300, seed=1, **kw))
    drawn = [FIRST_WORD.text(ids) for ids, _, _ in rows[0]]
    assert set(drawn) == set(words)
    if not kw:  # the model's own frequencies
        assert drawn.count("a") / 300 == pytest.approx(0.5, abs=0.08)


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize(("beam", "alpha", "kw"), [
    (1, 0.0, dict(block_ngram=2)), (3, 0.6, dict(block_ngram=3)), (3, 0.0, dict(bad_endings=[4, 6])),
    (3, 1.0, dict(block_ngram=1, bad_endings=[5])),
    (1, 0.0, dict(sampling=dict(n=3, seed=3, temperature=0.8, top_k=4, top_p=0.95), block_ngram=2, bad_endings=[4])),
    (1, 0.0, dict(sampling=dict(n=2, seed=5))), (3, 0.0, dict(groups=3, diversity=1.0)),
    (4, 0.6, dict(groups=2, diversity=0.5, block_ngram=2, bad_endings=[5]))])
def test_the_onnx_runners_search_mirrors_decode(family: str, beam: int, alpha: float, kw: dict) -> None:
    d, features = decoder(family, end_bias=-2.0), torch.randn(5, 4, FEATURES)
    expected = run("torch", d, features, beam, 8, alpha, **kw)
    got = run("numpy", d, features, beam, 8, alpha, **kw)
    assert [[ids for ids, _, _ in row] for row in got] == [[ids for ids, _, _ in row] for row in expected]
    scores = [[x for row in rows for _, *s in row for x in s] for rows in (got, expected)]
    assert scores[0] == pytest.approx(scores[1], abs=1e-4)


# beam 3 says "a dog", "a cat", "the dog": two of them begin with "a"
DIVERSE = Chain({"<start>": {"a": 0.7, "the": 0.2, "two": 0.1}, "a": {"dog": 0.4, "cat": 0.35, "man": 0.25},
                 "the": {"dog": 1}, "two": {"dogs": 1}, "dog": {"<end>": 1}, "cat": {"<end>": 1}, "man": {"<end>": 1},
                 "dogs": {"<end>": 1}})


@pytest.mark.parametrize("impl", IMPLS)
def test_diverse_beam_groups_choose_other_words_than_earlier_groups(impl: str) -> None:
    def texts(**kw) -> list[str]:
        return [DIVERSE.text(ids) for ids, _, _ in run(impl, DIVERSE, ONE_IMAGE, beam=3, **kw)[0]]

    assert texts() == ["a dog", "a cat", "the dog"]
    assert texts(groups=3, diversity=10.0) == ["a dog", "the dog", "two dogs"]
    assert texts(groups=3, diversity=0.0) == ["a dog"]  # three identical groups: one caption, returned once
    row = run(impl, DIVERSE, ONE_IMAGE, beam=3, groups=3, diversity=10.0)[0]
    assert [lp for _, _, lp in row] == pytest.approx([float(torch.tensor(p).log()) for p in (0.28, 0.2, 0.1)],
                                                     abs=1e-4)  # scores stay log-probabilities


@pytest.mark.parametrize("family", DECODERS)
def test_diverse_beam_gives_distinct_captions_for_every_image(family: str) -> None:
    d, features = decoder(family, end_bias=-30.0), torch.randn(6, 4, FEATURES)  # 5 words each
    plain = beam_search(d, features, 4, 5)
    diverse = beam_search(d, features, 4, 5, groups=4, diversity=5.0)
    assert any(len({h.ids[0] for h in row}) < 4 for row in plain)
    for row in diverse:  # every group its own first word
        assert len(row) == 4 and len({h.ids[0] for h in row}) == 4


def test_search_dispatches_on_the_settings() -> None:
    d, features = decoder("attention"), torch.randn(2, 4, FEATURES)
    vocab = Vocabulary([*SPECIALS, "a", "the", "dog", "cat", "runs", "on"])
    got = search(d, features, vocab, Search(max_len=8))
    assert [[h.ids for h in row] for row in got] == [[h.ids] for h in greedy(d, features, 8)]
    got = search(d, features, vocab, Search(3, 8, 0.5, block_ngram=2, bad_endings=True))
    assert [[h.ids for h in row] for row in got] == [[h.ids for h in row] for row in
                                                     beam_search(d, features, 3, 8, 0.5, 2, [4, 5, 9])]
    got = search(d, features, vocab, Search(4, 8, groups=2, diversity=1.5))
    assert [[h.ids for h in row] for row in got] == [[h.ids for h in row] for row in
                                                     beam_search(d, features, 4, 8, groups=2, diversity=1.5)]
    got = search(d, features, vocab, Search(max_len=8, sample=True, n=3, seed=2))
    assert [[h.ids for h in row] for row in got] == [[h.ids for h in row] for row in
                                                     sample_captions(d, features, 3, 8, seed=2)]
    with pytest.raises(ValueError, match="needs the search's max_len"):  # the model's fills it in
        search(d, features, vocab, Search())
