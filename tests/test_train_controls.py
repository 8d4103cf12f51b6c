"""The training controls: label smoothing, scheduled sampling (step-by-step teacher forcing), word dropout and the
training captions' length cut, each against what it must compute, then in a tiny training run."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from captioner.data.captions import CaptionIds
from captioner.data.datasets import ImageRecord
from captioner.data.vocab import END, PAD, START, UNK, Vocabulary
from captioner.models.attention import ShowAttendTell
from captioner.models.decoder import ShowTell, caption_loss, unroll
from captioner.training.module import word_dropout
from captioner.training.run import TrainConfig, train
from captioner.training.schedule import Schedule, parse_schedule

VOCAB, FEATURES = 12, 6


def decoder(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return (ShowTell(VOCAB, FEATURES, 8, 16, dropout=0.5) if family == "show-tell"
            else ShowAttendTell(VOCAB, FEATURES, 8, 16, 8, 8, dropout=0.5, cells=4)).train()


def captions(rows: int = 5, length: int = 7) -> torch.Tensor:
    c = torch.randint(4, VOCAB, (rows, length))
    c[:, 0] = START
    c[0, 4], c[0, 5:] = END, PAD  # a shorter caption, padded
    c[:, -1] = torch.where(c[:, -1] == PAD, PAD, END)
    return c


@pytest.mark.parametrize("family", ["show-tell", "attention"])
def test_scheduled_sampling_at_probability_zero_is_teacher_forcing(family: str) -> None:
    d, features, caps = decoder(family), torch.randn(5, 4, FEATURES), captions()
    twin = copy.deepcopy(d)  # a training pass updates the BatchNorm statistics: each path starts from the same ones
    torch.manual_seed(1)  # the same dropout masks: both draw them once, for the whole [B, T-1, H]
    hidden, alphas = twin(features, caps)
    teacher = caption_loss(twin.out, hidden, caps)
    teacher.backward()
    grads = [p.grad for p in twin.parameters() if p.grad is not None]
    torch.manual_seed(1)
    hidden_steps, alphas_steps = unroll(d, features, caps, own=0.0)
    stepped = caption_loss(d.out, hidden_steps, caps)
    stepped.backward()
    assert stepped.item() == pytest.approx(teacher.item(), abs=1e-6)
    assert (alphas is None) == (alphas_steps is None)
    if alphas is not None:
        assert torch.allclose(alphas, alphas_steps, atol=1e-6)
    for g, p in zip(grads, [p for p in d.parameters() if p.grad is not None], strict=True):
        assert torch.allclose(g, p.grad, atol=1e-5)


@pytest.mark.parametrize("family", ["show-tell", "attention"])
def test_at_probability_one_the_model_reads_only_its_own_words(family: str) -> None:
    d, features = decoder(family), torch.randn(5, 4, FEATURES)
    a, b = captions(), captions()
    assert not torch.equal(a[:, 1:-1], b[:, 1:-1])
    outs = []
    for caps in (a, b):
        torch.manual_seed(2)
        outs.append(unroll(copy.deepcopy(d), features, caps, own=1.0)[0])
    assert torch.equal(outs[0], outs[1])  # after <start> every input was drawn from the model
    torch.manual_seed(2)
    assert not torch.allclose(unroll(copy.deepcopy(d), features, a, own=0.0)[0], outs[0])


def test_label_smoothing_spreads_eps_over_the_vocabulary_and_ignores_padding() -> None:
    out, caps = torch.nn.Linear(16, VOCAB), captions()
    hidden = torch.randn(5, 6, 16)
    real = caps[:, 1:] != PAD
    logp = out(hidden[real]).log_softmax(-1)
    nll = -logp.gather(1, caps[:, 1:][real][:, None]).squeeze(1)
    for eps in (0.0, 0.1, 0.3):
        expected = ((1 - eps) * nll + eps * -logp.mean(-1)).mean()
        got = caption_loss(out, hidden, caps, label_smoothing=eps)
        assert got.item() == pytest.approx(expected.item(), abs=1e-6)
        chunked = caption_loss(out, hidden, caps, budget=3 * VOCAB, label_smoothing=eps)  # the chunked path
        assert chunked.item() == pytest.approx(expected.item(), abs=1e-6)
    assert caption_loss(out, hidden, caps, label_smoothing=0.1) > caption_loss(out, hidden, caps)


def test_the_schedule_is_ruotianluos() -> None:
    # if epoch > start: min(increase * ((epoch - start) // every), max)
    s = parse_schedule("0.05:2:3:0.12")
    assert s == Schedule(0.05, 2, 3, 0.12)
    assert [s.prob(e) for e in range(12)] == pytest.approx([0, 0, 0, 0, 0, 0.05, 0.05, 0.05, 0.1, 0.1, 0.1, 0.12])
    assert parse_schedule("0.05") == Schedule(0.05, 0, 5, 0.25)
    assert [parse_schedule("0.05:0:1").prob(e) for e in range(8)] == pytest.approx(
        [0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.25, 0.25])
    assert parse_schedule("") is None and parse_schedule("0") is None
    for bad in ("x", "0.1:a", "0.1:0:0", "1.5", "0.1:0:1:2", "0.1:0:1:0.2:3"):
        with pytest.raises(ValueError, match="scheduled-sampling"):
            parse_schedule(bad)
    with pytest.raises(ValueError, match="scheduled-sampling"):
        TrainConfig(data="x", scheduled_sampling="0.1:0:0")


def test_word_dropout_replaces_only_words_by_unk_at_its_rate() -> None:
    torch.manual_seed(0)
    caps = captions(400, 12)
    dropped = word_dropout(caps, 0.3)
    special = (caps == START) | (caps == END) | (caps == PAD)
    assert torch.equal(dropped[special], caps[special])
    changed = dropped != caps
    assert bool((dropped[changed] == UNK).all())
    assert changed.sum().item() / (~special).sum().item() == pytest.approx(0.3, abs=0.02)


def test_train_max_len_cuts_long_captions_without_end_and_counts_them(tmp_path) -> None:
    vocab = Vocabulary.build(["a b c d e f"], threshold=1)
    records = [ImageRecord(0, tmp_path / "x.jpg", ("a b c", "a b c d e f"), "train"),
               ImageRecord(1, tmp_path / "y.jpg", ("a b c d",), "train")]
    ids = CaptionIds(records, vocab, max_words=3)
    assert ids.cut == 2
    assert ids.plain[0].tolist() == vocab.encode("a b c")
    assert ids.plain[1].tolist() == vocab.encode("a b c")[:-1] == ids.plain[2].tolist()
    assert ids.lengths == [5, 4, 4]
    whole = CaptionIds(records, vocab)
    assert whole.cut == 0 and whole.plain[1].tolist() == vocab.encode("a b c d e f")


def test_a_run_with_every_control_trains_records_them_and_says_what_it_did(tiny_synth, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    cfg = TrainConfig(data=str(tiny_synth), out=str(run), epochs=2, batch_size=8, lr=0.02, min_lr=0.003,
                      threshold=1, val_images=4, cache_dir=str(tmp_path / "cache"), progress=False,
                      label_smoothing=0.1, scheduled_sampling="0.5:0:1:1", word_dropout=0.1, train_max_len=4)
    train(cfg, dict(backbone="resnet18", encoder_weights="none", image_size=64, grid=2, embed_size=16,
                    hidden_size=32))
    out = capsys.readouterr().out
    saved = json.loads((run / "train_config.json").read_text())
    assert {k: saved[k] for k in ("label_smoothing", "scheduled_sampling", "word_dropout", "train_max_len")} == dict(
        label_smoothing=0.1, scheduled_sampling="0.5:0:1:1", word_dropout=0.1, train_max_len=4)
    assert "epoch 1: scheduled sampling feeds the model's own word with probability 0" in out
    assert "epoch 2: scheduled sampling feeds the model's own word with probability 0.5" in out
    line = next(x for x in out.splitlines() if x.startswith("--train-max-len 4:"))
    cut, total = (int(w) for w in line.split(":")[1].split()[:3:2])
    assert 0 < cut <= total  # the synthetic captions run past 4 words
    assert (run / "model.safetensors").is_file()
