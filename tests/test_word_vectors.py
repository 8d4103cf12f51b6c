"""Word vectors: reading GloVe / fastText / word2vec text files (header, any language, case, gzip), the errors that
name the line, and a training run whose embedding starts from (and, frozen, keeps) them."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from captioner import load
from captioner.data.vocab import SPECIALS, Vocabulary
from captioner.data.word_vectors import apply_word_vectors, read_word_vectors
from captioner.training.run import TrainConfig, train


def tiny_run(**settings) -> TrainConfig:
    """A tiny run's config: a high rate, no moving average and no early stop, so that a few steps learn (the
    defaults are the photo recipe's)."""
    return TrainConfig(**(dict(lr=0.01, min_lr=0.001, ema=0.0, early_stop=0) | settings))


GLOVE = "the 0.1 0.2 0.3\nRed 1 2 3\nred 4 5 6\n. . . 7 8 9\n猫 -1 -2 -3.5\nsquare 0.5 0.5 0.5\n"


def write(tmp_path: Path, text: str, name: str = "vectors.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_glove_lines_any_language_words_with_spaces_and_the_exact_case_first(tmp_path) -> None:
    found = read_word_vectors(write(tmp_path, GLOVE), {"the", "red", "猫", ". . .", "circle"})
    assert found.dim == 3 and found.lines == 6
    assert sorted(found.vectors) == [". . .", "red", "the", "猫"]  # "circle" is not in the file
    assert found.vectors["red"].tolist() == [4, 5, 6]  # "red" itself, not "Red"
    assert found.vectors["猫"].tolist() == [-1, -2, -3.5]
    cased = read_word_vectors(write(tmp_path, "Red 1 2 3\nblue 0 0 1\n"), {"red", "blue"})
    assert cased.vectors["red"].tolist() == [1, 2, 3]  # a cased file's "Red" stands in for the vocabulary's "red"


def test_word2vec_header_and_gzip(tmp_path) -> None:
    path = tmp_path / "vectors.vec.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("2 2\nzwei 1 2 \ndrei 3 4 \n")  # fastText ends its lines with a space
    found = read_word_vectors(path, {"zwei", "drei"})
    assert found.dim == 2 and found.lines == 2 and found.vectors["drei"].tolist() == [3, 4]
    with pytest.raises(ValueError, match=r"header says 3 vectors but it holds 2"):
        read_word_vectors(write(tmp_path, "3 2\nzwei 1 2\ndrei 3 4\n"), {"zwei"})


@pytest.mark.parametrize(("text", "line", "why"), [
    ("a 1 2 3\nb 1 2\nc 1 2 3\n", 2, "only 2 of the file's 3 numbers"),
    ("a 1 2 3\nb 1 x 3\n", 2, "a field that is not a number"),
    ("a 1 2 3\nb 1 2 3\nc 1 2 3 4\n", 3, "more than the file's 3 numbers"),
    ("a 1 2 3\nb 1 nan 3\n", 2, "a number that is not finite"),
    ("2 3\na 1 2 3\nb\n", 3, "only 0 of the file's 3 numbers")])
def test_a_malformed_line_is_an_error_naming_the_file_and_line(tmp_path, text: str, line: int, why: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=rf"vectors.txt, line {line}: {why}"):
        read_word_vectors(path, {"a", "b", "c"})


def test_unreadable_files_are_clear_errors(tmp_path) -> None:
    (tmp_path / "latin1.txt").write_bytes("a 1 2\ncaf\xe9 3 4\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt, line 2: not UTF-8"):
        read_word_vectors(tmp_path / "latin1.txt", {"a"})
    with pytest.raises(FileNotFoundError, match="word vectors file not found"):
        read_word_vectors(tmp_path / "missing.txt", {"a"})
    with pytest.raises(ValueError, match="no word vectors in it"):
        read_word_vectors(write(tmp_path, "\n\n"), {"a"})


def test_the_embedding_takes_the_found_words_and_counts_the_others(tmp_path) -> None:
    vocab = Vocabulary([*SPECIALS, "the", "red", "circle", "猫"])
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(len(vocab), 3, padding_idx=0)
    before = embedding.weight.detach().clone()
    line = apply_word_vectors(embedding, write(tmp_path, GLOVE), vocab, freeze=True)
    assert "3 of 4 vocabulary words found, 1 not found, e.g. circle" in line and "frozen" in line
    w = embedding.weight.detach()
    assert w[vocab.stoi["red"]].tolist() == [4, 5, 6] and w[vocab.stoi["猫"]].tolist() == [-1, -2, -3.5]
    assert torch.equal(w[vocab.stoi["circle"]], before[vocab.stoi["circle"]])  # random, as without vectors
    assert torch.equal(w[:4], before[:4])  # the specials too
    assert not embedding.weight.requires_grad
    with pytest.raises(ValueError, match="3-dimensional vectors but the word embedding has 5: pass --embed-size 3"):
        apply_word_vectors(torch.nn.Embedding(len(vocab), 5), write(tmp_path, GLOVE), vocab)


def test_training_starts_from_the_vectors_and_frozen_keeps_them(tiny_synth, tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    words = ["a", "red", "blue", "green", "circle", "square", "triangle", "notaword"]
    vectors = {w: rng.normal(size=16).round(4) for w in words}
    path = write(tmp_path, "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vectors.items()))
    model = dict(backbone="resnet18", encoder_weights="none", image_size=64, grid=2, embed_size=16, hidden_size=32,
                 decoder="topdown")
    cfg = dict(data=str(tiny_synth), epochs=1, batch_size=16, threshold=1, cache_dir=str(tmp_path / "cache"),
               progress=False, word_vectors=str(path))
    run = train(tiny_run(out=str(tmp_path / "frozen"), freeze_word_vectors=True, **cfg), model)
    log = capsys.readouterr().out
    vocab = load(run).vocab
    shared = [w for w in words if w in vocab.stoi]
    assert len(shared) >= 5 and f"{len(shared)} of {len(vocab) - 4} vocabulary words found" in log
    embed = load_file(str(run / "model.safetensors"))["decoder.embed.weight"]
    for w in shared:
        assert torch.allclose(embed[vocab.stoi[w]], torch.tensor(vectors[w], dtype=torch.float32))
    tuned = train(tiny_run(out=str(tmp_path / "tuned"), **cfg), model)
    moved = load_file(str(tuned / "model.safetensors"))["decoder.embed.weight"]
    assert not torch.allclose(moved[vocab.stoi["red"]], torch.tensor(vectors["red"], dtype=torch.float32))
    with pytest.raises(ValueError, match="--freeze-word-vectors needs --word-vectors"):
        tiny_run(data="x", freeze_word_vectors=True)


def test_the_cli_stops_on_a_bad_vectors_file_naming_its_line(tiny_synth, tmp_path) -> None:
    from typer.testing import CliRunner

    from captioner.cli import app

    path = write(tmp_path, "red 1 2\nblue 1\n")
    result = CliRunner().invoke(app, ["train", "--data", str(tiny_synth), "--out", str(tmp_path / "run"),
                                      "--backbone", "resnet18", "--encoder-weights", "none", "--image-size", "64",
                                      "--grid", "2", "--embed-size", "2", "--threshold", "1", "--decoder", "adaptive",
                                      "--word-vectors", str(path), "--freeze-word-vectors", "--no-progress"])
    assert result.exit_code == 2 and "vectors.txt, line 2: only 1 of the file's 2 numbers" in result.output
    assert "Traceback" not in result.output
