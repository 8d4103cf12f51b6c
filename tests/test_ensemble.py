"""Ensembles on the decoder interface (an ensemble of a model with itself is that model; the average it searches),
their loading checks, and each caption's per-word log-probabilities (they add up to what the search scored)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from captioner.data.vocab import SPECIALS, Vocabulary
from captioner.inference import Captioner, load, load_ensemble
from captioner.models.captioner import ModelConfig
from captioner.models.ensemble import Ensemble
from captioner.models.families import DECODERS, create_decoder
from captioner.search import Search
from captioner.search.decode import search, word_log_probs

VOCAB, FEATURES = 10, 6
WORDS = Vocabulary([*SPECIALS, *(f"w{i}" for i in range(VOCAB - len(SPECIALS)))])  # no bad endings among them
SEARCHES = [dict(beam=1), dict(beam=3, length_penalty=1.0), dict(beam=4, groups=2, diversity=2),
            dict(beam=3, block_ngram=2), dict(sample=True, n=3, seed=0, temperature=0.7)]


def decoder(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = ModelConfig(VOCAB, family, grid=2, embed_size=8, hidden_size=16, attention_size=8, context_size=8)
    d = create_decoder(family, config, FEATURES).eval()
    with torch.no_grad():
        d.out.weight.mul_(4)
    return d


def found(d: torch.nn.Module, features: torch.Tensor, **kw) -> list[list[tuple[list[int], float, float]]]:
    return [[(h.ids, h.score, h.log_prob) for h in row] for row in search(d, features, WORDS, Search(max_len=7, **kw))]


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("kw", SEARCHES)
def test_an_ensemble_of_a_model_with_itself_gives_that_models_captions(family: str, kw: dict) -> None:
    d, features = decoder(family), torch.randn(4, 4, FEATURES)
    alone, twice = found(d, features, **kw), found(Ensemble([d, copy.deepcopy(d)]), features, **kw)
    assert [[ids for ids, _, _ in row] for row in twice] == [[ids for ids, _, _ in row] for row in alone]
    assert [s for row in twice for _, s, _ in row] == pytest.approx([s for row in alone for _, s, _ in row],
                                                                     abs=1e-5)


def test_an_ensemble_step_is_the_renormalised_mean_of_its_members_any_family() -> None:
    members = [decoder(family, seed) for seed, family in enumerate(DECODERS)]  # show-tell first
    ensemble, features, tokens = Ensemble(members), torch.randn(3, 4, FEATURES), torch.tensor([4, 5, 6])
    with torch.no_grad():
        log_probs, state, alpha = ensemble.step(tokens, ensemble.start(features))
        steps = [m.step(tokens, m.start(features)) for m in members]
    expected = torch.stack([lp for lp, _, _ in steps]).mean(0).log_softmax(-1)
    assert torch.allclose(log_probs, expected, atol=1e-6)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3))
    assert alpha is None  # the first member's attention: a Show-Tell has none
    assert len(state) == sum(len(s) for _, s, _ in steps)
    mixed = found(ensemble, features, beam=3)
    assert all(row and all(ids for ids, _, _ in row) for row in mixed)
    assert mixed != found(members[0], features, beam=3)  # the other members move the search


def tiny(tmp_path, name: str, vocab: Vocabulary, **kw) -> Captioner:
    config = ModelConfig(vocab_size=len(vocab), **(dict(decoder="show-tell",
                                                        backbone="resnet18", encoder_weights="none", image_size=64,
                                                        grid=2, embed_size=16, hidden_size=32) | kw))
    return Captioner(config, vocab).save(tmp_path / name)


def test_loading_an_ensemble_checks_the_vocabulary_and_the_encoder(tmp_path) -> None:
    vocab = Vocabulary.build(["a red square", "a blue circle"], threshold=1)
    a, b = tiny(tmp_path, "a", vocab), tiny(tmp_path, "b", vocab, decoder="attention")
    mixed = load_ensemble([a, b])
    assert isinstance(mixed.decoder, Ensemble) and len(mixed.decoder.members) == 2
    images = torch.randn(2, 3, 64, 64)
    assert [c[0].text for c in load_ensemble([a, a]).generate(images)] == [c[0].text for c in load(a).generate(images)]
    with pytest.raises(ValueError, match="not one model"):
        mixed.save(tmp_path / "joined")
    other = tiny(tmp_path, "other", Vocabulary.build(["a green star"], threshold=1))
    with pytest.raises(ValueError, match=f"--model {a} and --model {other} have different vocabularies"):
        load_ensemble([a, other])
    wider = tiny(tmp_path, "wider", vocab, grid=3)
    with pytest.raises(ValueError, match="read different image features.*grid 2 vs 3"):
        load_ensemble([a, wider])


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("kw", SEARCHES + [dict(beam=3, bad_endings=True, block_ngram=3)])
def test_word_log_probabilities_add_up_to_the_searched_log_probability(family: str, kw: dict) -> None:
    d, features = decoder(family), torch.randn(4, 4, FEATURES)
    rows = search(d, features, WORDS, Search(max_len=5, **kw))
    per_word = word_log_probs(d, features, [[h.ids for h in row] for row in rows], 5)
    for row, values in zip(rows, per_word, strict=True):
        assert len(values) == len(row)
        for h, lps in zip(row, values, strict=True):
            assert len(lps) == len(h.ids) + (len(h.ids) < 5)  # <end> unless cut at max_len
            assert sum(lps) == pytest.approx(h.log_prob, abs=1e-4)
            assert all(lp <= 0 for lp in lps)


def test_the_onnx_runners_word_log_probabilities_mirror_decodes() -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install captioner[onnx])")
    from test_decode import numpy_step

    from captioner.export import runner as onnx_runner

    d, features = decoder("attention"), torch.randn(3, 4, FEATURES)
    captions = [[h.ids for h in row] for row in search(d, features, WORDS, Search(beam=3, max_len=5))]
    with torch.no_grad():
        state = [s.numpy() for s in d.start(features)]
    got = onnx_runner.word_log_probs(numpy_step(d), state, captions, 5)
    want = word_log_probs(d, features, captions, 5)
    assert [[len(c) for c in row] for row in got] == [[len(c) for c in row] for row in want]
    assert np.allclose([v for row in got for c in row for v in c], [v for row in want for c in row for v in c],
                       atol=1e-5)
