"""The lean search: beam search against a plain beam run to max_len (the stopping bound is exact), and the
packed-weight search step against the training step (brute-force search tests are in test_model.py)."""
from __future__ import annotations

import copy

import pytest
import torch

from captioner.data.vocab import END, START
from captioner.decode import NEVER, beam_search, greedy, normalise, sample
from captioner.models.attention import ShowAttendTell
from captioner.models.decoder import ShowTell

VOCAB, FEATURES = 10, 6  # 4 specials + 6 words


def decoder(family: str, end_bias: float = 0.0, seed: int = 0, layers: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    d = (ShowTell(VOCAB, FEATURES, 8, 16, num_layers=layers) if family == "show-tell"
         else ShowAttendTell(VOCAB, FEATURES, 8, 16, 8, 8, cells=4)).eval()
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


@pytest.mark.parametrize("family", ["show-tell", "attention"])
@pytest.mark.parametrize(("beam", "alpha", "end_bias"), [(2, 0.0, 0.0), (3, 0.0, 2.0), (3, 1.0, -2.0), (5, 0.6, 0.0)])
def test_beam_equals_a_plain_beam_run_to_max_len(family: str, beam: int, alpha: float, end_bias: float) -> None:
    d = decoder(family, end_bias)
    features = torch.randn(3, 4, FEATURES)
    for image, row in zip(features, beam_search(d, features, beam, 6, alpha), strict=True):
        expected = plain_beam(d, image[None], beam, 6, alpha)
        assert [h.ids for h in row] == [ids for ids, _ in expected]
        assert [h.score for h in row] == pytest.approx([s for _, s in expected], abs=1e-4)


@pytest.mark.parametrize(("family", "layers"), [("show-tell", 1), ("show-tell", 2), ("attention", 1)])
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


@pytest.mark.parametrize("family", ["show-tell", "attention"])
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


@pytest.mark.parametrize("family", ["show-tell", "attention"])
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
