"""Encoder, both decoder families, the search module and the model artifact, on tiny models."""
from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from captioner.data.vocab import END, PAD, START, UNK, Vocabulary
from captioner.inference import Captioner, load
from captioner.models import attention
from captioner.models.attention import attention_penalty
from captioner.models.captioner import ModelConfig
from captioner.models.decoder import ShowTell, caption_loss
from captioner.models.encoder import Encoder
from captioner.models.families import DECODERS, create_decoder
from captioner.models.families import FAMILIES as REGISTRY
from captioner.search import Search
from captioner.search.decode import NEVER, beam_search, greedy, sample
from captioner.search.hypotheses import normalise

CAPTIONS = ["a red circle on the left", "a blue square above a green triangle", "a small red square on the right"]
FAMILIES = DECODERS


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.build(CAPTIONS, threshold=1)


def tiny(vocab: Vocabulary, decoder: str) -> Captioner:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=len(vocab), decoder=decoder, backbone="resnet18", encoder_weights="none",
                         image_size=32, grid=2, embed_size=16, hidden_size=32, attention_size=16, context_size=16)
    return Captioner(config, vocab).eval()


def decoder_of(family: str, vocab_size: int, seed: int, features: int = 6, cells: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    grid = round(cells ** 0.5)
    name, _, score = family.partition(":")  # "attention:dot": the dot-product score
    config = ModelConfig(vocab_size, name, grid=grid, embed_size=5, hidden_size=7, attention_size=4, context_size=3,
                         attention_score=score or "additive", dropout=0.0)
    dec = create_decoder(name, config, features)
    with torch.no_grad():  # sharper distributions than the init, so search choices matter
        dec.out.weight.mul_(8)
        dec.out.bias.normal_(0, 2)
    return dec.eval()


def test_encoder_gives_a_grid_and_is_frozen_unless_fine_tuned() -> None:
    frozen = Encoder("resnet18", "none", grid=3)
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    assert frozen(torch.randn(2, 3, 64, 64)).shape == (2, 9, 512)
    tuned = Encoder("resnet18", "none", grid=2, fine_tune=True)
    trainable = {n.split(".")[0] for n, p in tuned.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer4"}
    tuned.train()
    assert not tuned.backbone.training


def test_grid_mean_is_the_average_pool() -> None:
    encoder = Encoder("resnet18", "none", grid=2).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        pooled = encoder.backbone(x).mean((2, 3))
        assert torch.allclose(encoder(x).mean(1), pooled, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_forcing_padded_matches_alone_and_loss_ignores_padding(family: str) -> None:
    dec = decoder_of(family, 12, seed=0)
    features = torch.randn(2, 4, 6)
    short = torch.tensor([[START, 5, 6, END]])
    padded = torch.tensor([[START, 5, 6, END, PAD, PAD], [START, 7, 8, 9, 10, END]])
    dec.eval()
    hidden, alphas = dec(features, padded, torch.tensor([4, 6]))
    assert dec.out(hidden).shape == (2, 5, 12)
    alone, _ = dec(features[:1], short)
    assert torch.allclose(hidden[0, :3], alone[0], atol=1e-5)
    assert torch.allclose(caption_loss(dec.out, alone, short), caption_loss(dec.out, hidden[:1], padded[:1]))
    if REGISTRY[family].attends:
        assert alphas.shape == (2, 5, 4)


def test_chunked_loss_equals_the_whole_loss_and_its_gradients() -> None:
    """Logits made a few rows at a time (and remade for the backward pass) give the same loss and gradients."""
    torch.manual_seed(0)
    out, hidden = torch.nn.Linear(8, 12), torch.randn(3, 6, 8, requires_grad=True)
    captions = torch.randint(4, 12, (3, 7))
    captions[1, 4:], captions[2, 2:] = PAD, PAD
    grads = []
    for budget in (10**6, 12, 36):  # one piece, one row a piece, 3 rows a piece
        loss = caption_loss(out, hidden, captions, budget=budget)
        grads.append((loss, *torch.autograd.grad(loss, [hidden, out.weight, out.bias])))
    whole = F.cross_entropy(out(hidden).flatten(0, 1), captions[:, 1:].flatten(), ignore_index=PAD)
    for got in grads:
        assert torch.allclose(got[0], whole, atol=1e-6)
        for a, b in zip(got[1:], grads[0][1:], strict=True):
            assert torch.allclose(a, b, atol=1e-6)


def test_attention_in_recomputed_chunks_gives_the_same_result(monkeypatch) -> None:
    """Teacher forcing may attend a batch's words in chunks, recomputed in the backward pass (checkpoint): the
    outputs, maps and gradients are those of one pass over all words."""
    dec = decoder_of("attention", 12, seed=2)
    features, captions = torch.randn(2, 4, 6), torch.tensor([[START, 5, 6, 7, END], [START, 8, 9, END, PAD]])
    results = []
    for chunk in (attention.CHUNK, 0):  # 0: a word a chunk
        monkeypatch.setattr(attention, "CHUNK", chunk)
        hidden, alphas = dec(features, captions)
        loss = caption_loss(dec.out, hidden, captions) + attention_penalty(alphas, captions)
        results.append((hidden, alphas, *torch.autograd.grad(loss, list(dec.parameters()), allow_unused=True)))
    for a, b in zip(*results, strict=True):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("family", [*FAMILIES, "attention:dot"])
def test_step_matches_teacher_forcing(family: str) -> None:
    """The search's step-by-step path computes what training computes."""
    dec = decoder_of(family, 12, seed=1)
    features, caption = torch.randn(1, 4, 6), torch.tensor([[START, 5, 6, 7, END]])
    hidden, _ = dec(features, caption)
    with torch.no_grad():  # validation's teacher forcing (the search's packed weights exist there)
        assert torch.allclose(dec(features, caption)[0], hidden, atol=1e-6)
    state, steps = dec.start(features), []
    for t in range(caption.size(1) - 1):
        log_probs, state, _ = dec.step(caption[:, t], state)
        steps.append(log_probs)
    assert torch.allclose(torch.stack(steps, 1), F.log_softmax(dec.out(hidden), -1), atol=1e-5)


def test_attention_rows_sum_to_one_and_the_penalty_is_doubly_stochastic() -> None:
    dec = decoder_of("attention", 12, seed=2, cells=9)
    captions = torch.tensor([[START, 5, 6, END, PAD], [START, 7, 8, 9, END]])
    _, alphas = dec(torch.randn(2, 9, 6), captions)
    assert torch.allclose(alphas.sum(-1), torch.ones(2, 4), atol=1e-6) and (alphas >= 0).all()
    _, _, alpha = dec.step(torch.tensor([START, START]), dec.start(torch.randn(2, 9, 6)))
    assert torch.allclose(alpha.sum(-1), torch.ones(2), atol=1e-6)
    uniform = torch.full((1, 9, 9), 1 / 9)  # 9 words each spread over 9 cells: every cell gets 1 in total
    assert attention_penalty(uniform, torch.tensor([[START] + [5] * 9])) == pytest.approx(0.0, abs=1e-6)
    peaked = torch.zeros(1, 9, 9)
    peaked[..., 0] = 1  # all on one cell: (1 - 9)^2 + 8 * 1
    assert attention_penalty(peaked, torch.tensor([[START] + [5] * 9])) == pytest.approx(72.0)


def test_attention_for_the_next_word_looks_after_reading_the_last_one() -> None:
    """The map used to predict the word after "blue" depends on "blue" (the state after reading it): querying the
    state before it (Xu et al.'s order) gives one map whatever word was read, so colour and shape can come from
    two objects."""
    dec = decoder_of("attention", 12, seed=3, cells=9)
    state = dec.start(torch.randn(1, 9, 6).repeat(2, 1, 1))
    _, _, alpha = dec.step(torch.tensor([5, 6]), state)  # the same image and state, two different words read
    assert (alpha[0] - alpha[1]).abs().max() > 1e-6


def brute_force(dec: torch.nn.Module, features: torch.Tensor, vocab_size: int, max_len: int,
                alpha: float) -> tuple[list[int], float]:
    """The best caption by normalised score among every caption of at most ``max_len`` tokens."""
    words = [w for w in range(vocab_size) if w not in (*NEVER, END)]
    best: tuple[list[int], float, float] = ([], float("-inf"), float("-inf"))
    for length in range(1, max_len + 1):  # a caption has at least one word
        for seq in itertools.product(words, repeat=length):
            ended = length < max_len
            tokens = [START, *seq, END][: length + 1 + ended]
            state, total = dec.start(features), 0.0
            for t in range(len(tokens) - 1):
                log_probs, state, _ = dec.step(torch.tensor([tokens[t]]), state)
                total += float(log_probs[0, tokens[t + 1]])
            score = normalise(total, length, alpha)
            if score > best[2]:
                best = (list(seq), total, score)
    return best[0], best[1]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_full_width_beam_finds_the_brute_force_best(family: str, alpha: float) -> None:
    vocab_size, max_len = 7, 3  # 3 real words after the 4 specials
    width = 3 ** (max_len - 1)  # as many beams as prefixes: nothing is ever pruned
    with torch.no_grad():
        for seed in range(6):
            dec = decoder_of(family, vocab_size, seed)
            features = torch.randn(1, 4, 6)
            ids, score = brute_force(dec, features, vocab_size, max_len, alpha)
            found = beam_search(dec, features, beam=width, max_len=max_len, length_penalty=alpha)[0][0]
            assert found.ids == ids, f"seed {seed}"
            assert found.log_prob == pytest.approx(score, abs=1e-5)


class Garden(torch.nn.Module):
    """A hand-built decoder: greedy's first word 'a' (0.6) leads only to poor endings; 'b' (0.4) to a sure one."""

    A, B, X = 4, 5, 6

    def start(self, features: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.zeros(features.size(0), 1, dtype=torch.long),)

    def step(self, tokens: torch.Tensor, state: tuple[torch.Tensor]):
        probs = torch.full((tokens.size(0), 7), 1e-9)
        for i, t in enumerate(tokens.tolist()):
            if t == START:
                probs[i, self.A], probs[i, self.B] = 0.6, 0.4
            elif t == self.A:
                probs[i, [END, self.X, self.B]] = torch.tensor([0.34, 0.33, 0.33])
            else:
                probs[i, END] = 1.0
        return probs.log(), state, None


def test_beam_finds_what_greedy_misses_and_is_never_below_it() -> None:
    features = torch.zeros(1, 1, 1)
    g = greedy(Garden(), features, max_len=4)[0]
    b = beam_search(Garden(), features, beam=2, max_len=4)[0][0]
    assert g.ids == [Garden.A] and b.ids == [Garden.B]
    assert b.score > g.score and b.score == pytest.approx(torch.tensor(0.4).log().item(), abs=1e-6)
    with torch.no_grad():
        for seed in range(6):
            dec, f = decoder_of("show-tell", 9, seed), torch.randn(3, 4, 6)
            for gh, row in zip(greedy(dec, f, 6), beam_search(dec, f, beam=3, max_len=6), strict=True):
                assert row[0].score >= gh.score - 1e-5


def test_greedy_scores_only_the_returned_tokens() -> None:
    dec = decoder_of("show-tell", 9, seed=3)
    with torch.no_grad():
        dec.out.bias[END] = -1e4  # never ends: cut at max_len
        features = torch.randn(2, 4, 6)
        for hyp in greedy(dec, features, max_len=4):
            state, total, prev = dec.start(features[:1]), 0.0, START
            assert len(hyp.ids) == 4
            for w in hyp.ids:
                log_probs, state, _ = dec.step(torch.tensor([prev]), state)
                total, prev = total + float(log_probs[0, w]), w
            features = features[1:]
            assert hyp.score == pytest.approx(total, abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_beams_are_sorted_distinct_and_never_below_greedy(vocab: Vocabulary, family: str) -> None:
    model = tiny(vocab, family)
    features = torch.randn(3, 4, 512)
    g = greedy(model.decoder, features, max_len=8)
    b1 = beam_search(model.decoder, features, beam=1, max_len=8)  # may keep an ended caption greedy passed by
    assert all(row[0].score >= h.score - 1e-5 for h, row in zip(g, b1, strict=True))
    for row in beam_search(model.decoder, features, beam=3, max_len=8):
        assert len(row) == 3 and [h.score for h in row] == sorted((h.score for h in row), reverse=True)
        assert len({tuple(h.ids) for h in row}) == 3
        assert all(len(h.ids) <= 8 and not {PAD, START, END, UNK} & set(h.ids) for h in row)


def test_cut_captions_compete_when_no_beam_ends(vocab: Vocabulary) -> None:
    dec = ShowTell(len(vocab), 6, 8, 16)
    with torch.no_grad():
        dec.out.bias[END] = -1e4  # <end> never wins
    for row in beam_search(dec, torch.randn(2, 4, 6), beam=2, max_len=5):
        assert len(row) == 2 and all(len(h.ids) == 5 for h in row)


def test_sampling_is_batched_and_never_emits_specials() -> None:
    dec = decoder_of("attention", 9, seed=4)
    ids, log_probs = sample(dec, torch.randn(3, 4, 6), n=5, max_len=6)
    assert ids.shape == (15, 6) and log_probs.shape == (15,) and log_probs.requires_grad
    assert not torch.isin(ids, torch.tensor([START, UNK])).any()
    for row in ids.tolist():  # <pad> only after <end>
        cut = row.index(END) + 1 if END in row else len(row)
        assert PAD not in row[:cut] and set(row[cut:]) <= {PAD}


@pytest.mark.parametrize("family", FAMILIES)
def test_caption_text_has_no_special_tokens_and_attention_has_a_map_per_word(vocab: Vocabulary, family: str) -> None:
    model = tiny(vocab, family)
    images = [Image.new("L", (40, 30), 128), Image.new("RGBA", (30, 50), (255, 0, 0, 0)), Image.new("CMYK", (32, 32))]
    for hyps in model.caption(images, Search(beam=3)):
        for c in hyps:
            assert "<" not in c.text and c.score <= 0
    for (c,) in model.caption(images):
        if REGISTRY[family].attends:
            assert c.attention.shape[1:] == (2, 2) and len(c.attention) >= len(c.text.split())
            assert torch.allclose(c.attention.sum((1, 2)), torch.ones(len(c.attention)), atol=1e-5)
        else:
            assert c.attention is None


@pytest.mark.parametrize("family", FAMILIES)
def test_artifact_round_trip_gives_identical_captions(vocab: Vocabulary, family: str, tmp_path) -> None:
    model = tiny(vocab, family)
    folder = model.save(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "vocab.json"]
    again = load(folder)
    assert again.config.decoder == family and type(again.decoder) is type(model.decoder)
    features = torch.randn(2, 4, 512)
    assert [[(c.text, c.score) for c in row] for row in model.generate(features, Search(beam=2))] == \
           [[(c.text, c.score) for c in row] for row in again.generate(features, Search(beam=2))]


def test_the_attention_score_is_saved_and_a_config_without_it_is_additive(vocab: Vocabulary, tmp_path) -> None:
    """A dot-score model round-trips with its score and without the additive score's layers; a config.json from
    before the setting loads as the additive model it was."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=len(vocab), decoder="attention", backbone="resnet18", encoder_weights="none",
                         image_size=32, grid=2, embed_size=16, hidden_size=32, attention_size=16, context_size=16,
                         attention_score="dot")
    model = Captioner(config, vocab).eval()
    folder = model.save(tmp_path / "dot")
    assert json.loads((folder / "config.json").read_text())["attention_score"] == "dot"
    assert not any(k.startswith(("decoder.keys", "decoder.score")) for k in load_file(folder / "model.safetensors"))
    again = load(folder)
    features = torch.randn(2, 4, 512)
    assert [[c.text for c in row] for row in model.generate(features)] == \
           [[c.text for c in row] for row in again.generate(features)]
    old = tiny(vocab, "attention").save(tmp_path / "old")
    settings = json.loads((old / "config.json").read_text())
    del settings["attention_score"]
    (old / "config.json").write_text(json.dumps(settings))
    assert load(old).config.attention_score == "additive"
    with pytest.raises(ValueError, match="unknown attention score 'luong'"):
        ModelConfig(vocab_size=9, decoder="attention", attention_score="luong")


def test_artifact_errors_name_the_file(vocab: Vocabulary, tmp_path) -> None:
    model = tiny(vocab, "show-tell")
    folder = model.save(tmp_path / "m")
    (folder / "vocab.json").write_text(json.dumps({"itos": ["<pad>", "<start>", "<end>", "<unk>", "x"]}))
    with pytest.raises(ValueError, match="vocab.json"):
        load(folder)
    model.save(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"hidden_size": 64}))
    with pytest.raises(ValueError, match="model.safetensors"):
        load(folder)
    attention = tiny(vocab, "attention").save(tmp_path / "att")  # laid out as before the LSTM read ahead of attention
    old = {k.replace("decoder.lstm.", "decoder.cell.").removesuffix("_l0"): v
           for k, v in load_file(str(attention / "model.safetensors")).items()}
    save_file(old, str(attention / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['decoder.lstm.*retrain"):
        load(attention)
    (folder / "config.json").write_text(json.dumps(config | {"decoder": "transformer"}))
    with pytest.raises(ValueError, match="show-tell, attention"):
        load(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load(folder)
    with pytest.raises(FileNotFoundError, match="not found"):
        load(tmp_path / "nowhere")


def test_a_vocabulary_of_the_same_size_from_another_model_is_refused(vocab: Vocabulary, tmp_path) -> None:
    """It loaded silently before (only the size was checked) and every caption came out in the wrong words."""
    folder = tiny(vocab, "show-tell").save(tmp_path / "m")
    other = Vocabulary(vocab.itos[:4] + vocab.itos[:3:-1])  # the same words, another order: the same size
    other.save(folder / "vocab.json")
    with pytest.raises(ValueError, match=r"m/vocab.json is not the vocabulary of .*m/config.json .*copy the model "
                                         r"folder's own vocab.json"):
        load(folder)
    vocab.save(folder / "vocab.json")
    assert load(folder).vocab.itos == vocab.itos
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_sha256"] == vocab.sha256() != other.sha256()
    del config["vocab_sha256"]  # a model saved before the fingerprint still loads
    (folder / "config.json").write_text(json.dumps(config))
    assert load(folder).config.vocab_sha256 == ""


@pytest.mark.parametrize("field, value", [("hidden_size", -5), ("grid", 0), ("image_size", -224), ("dropout", 1.5)])
def test_config_sizes_out_of_range_are_errors_naming_the_file_and_field(vocab: Vocabulary, tmp_path, field: str,
                                                                        value) -> None:
    folder = tiny(vocab, "show-tell").save(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {field: value}))
    with pytest.raises(ValueError, match=rf"m/config.json: '{field}' must be .*, got {value}"):
        load(folder)


def test_grid_features_are_standardised_before_the_embedding() -> None:
    dec = ShowTell(12, 8, embed_size=4, hidden_size=6).train()
    features = 50 + 0.1 * torch.randn(64, 3, 8)
    dec.image(features)  # the first training batch sets the running statistics
    assert torch.allclose(dec.standardize.running_mean, features.mean(1).mean(0), atol=1e-4)
    standardised = F.batch_norm(features.mean(1), dec.standardize.running_mean, dec.standardize.running_var)
    assert standardised.mean().abs() < 1e-3 and standardised.std() == pytest.approx(1, abs=0.05)
    assert dec.image(features[:1]).shape == (1, 4)  # a one-caption batch still works


@pytest.mark.parametrize("family", FAMILIES)
def test_a_training_batch_is_not_normalised_by_its_own_statistics(family: str) -> None:
    """Length-bucketed batches group images by caption length: normalised by the batch's own statistics, an
    image's features would depend on its batch mates and so tell the decoder the length to predict."""
    dec = decoder_of(family, 12, seed=4).train()
    features, captions = 3 + torch.randn(5, 4, 6), torch.tensor([[START, 5, 6, END]] * 3)
    dec(features[:3], captions)  # a first batch sets the running statistics
    alone = copy.deepcopy(dec)(features[[0, 1, 2]], captions)[0][0]
    mates = copy.deepcopy(dec)(features[[0, 3, 4]], captions)[0][0]
    assert torch.allclose(alone, mates, atol=1e-6)


def test_the_registry_builds_each_family_and_an_unknown_name_lists_the_choices() -> None:
    config = ModelConfig(12, "show-tell", grid=2, embed_size=5, hidden_size=7, attention_size=4, context_size=3)
    built = {name: type(create_decoder(name, config, 6)).__name__ for name in DECODERS}
    assert built == {"show-tell": "ShowTell", "attention": "ShowAttendTell", "adaptive": "AdaptiveAttention",
                     "topdown": "TopDown"}
    with pytest.raises(ValueError, match="unknown decoder 'transformer'; choose one of show-tell, attention, "
                                         "adaptive, topdown"):
        create_decoder("transformer", config, 6)
    with pytest.raises(ValueError, match="choose one of"):
        ModelConfig(12, "transformer")


def test_the_adaptive_sentinel_takes_a_share_of_the_context() -> None:
    """Lu et al.'s gate: the softmax over the cells and the sentinel; the map a step returns is the cells' part,
    renormalised, and the context moves with the sentinel's value."""
    dec = decoder_of("adaptive", 12, seed=5, cells=9)
    state = dec.start(torch.randn(2, 9, 6))
    with torch.no_grad():
        hidden, _, alpha = dec.advance(torch.tensor([5, 6]), state)
        assert torch.allclose(alpha.sum(-1), torch.ones(2), atol=1e-6)
        dec.sentinel.bias.add_(1.0)  # moves only the sentinel's value (and its score)
        moved, _, alpha2 = dec.advance(torch.tensor([5, 6]), state)
    assert not torch.allclose(hidden, moved)
    assert torch.allclose(alpha, alpha2, atol=1e-6)  # the cells' own scores do not change
