"""ONNX export and the onnxruntime runner: same captions, log-probs and attention as PyTorch, and no torch needed."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install captioner[onnx])")

from captioner.cli import app  # noqa: E402
from captioner.data.datasets import open_split  # noqa: E402
from captioner.data.images import eval_transform  # noqa: E402
from captioner.data.rgb import load_rgb, to_rgb  # noqa: E402
from captioner.data.vocab import END, START, Vocabulary  # noqa: E402
from captioner.export.onnx import export_onnx  # noqa: E402
from captioner.export.runner import load_onnx, preprocess  # noqa: E402
from captioner.inference import Captioner  # noqa: E402
from captioner.models.captioner import ModelConfig  # noqa: E402
from captioner.models.families import DECODERS  # noqa: E402
from captioner.search import Search  # noqa: E402
from captioner.serve.app import create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tiny_synth: Path) -> list[Image.Image]:
    """The synthetic test images plus odd ones: tall, wide, grayscale, transparent."""
    records, _ = open_split(tiny_synth, "test")
    rng = np.random.default_rng(0)
    odd = [Image.fromarray(rng.integers(0, 256, (90, 47, 3), dtype=np.uint8)),
           Image.fromarray(rng.integers(0, 256, (31, 77), dtype=np.uint8), "L"),
           Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), "RGBA")]
    return [load_rgb(r.path) for r in records] + odd


@pytest.fixture(scope="module", params=[*DECODERS, "attention:dot"])
def exported(request: pytest.FixtureRequest, tiny_synth: Path, images: list[Image.Image],
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Captioner, Path]:
    """A random-weight model of each family, made to say several image-dependent words, and its ONNX export."""
    records, _ = open_split(tiny_synth, "train")
    vocab = Vocabulary.build((c for r in records for c in r.captions), threshold=1)
    decoder, _, score = request.param.partition(":")
    torch.manual_seed(1 if score else 0)  # seeds whose random captions each search option changes
    config = ModelConfig(vocab_size=len(vocab), decoder=decoder, backbone="resnet18", encoder_weights="none",
                         image_size=64, grid=2, embed_size=16, hidden_size=32, attention_size=16, context_size=16,
                         max_len=12, attention_score=score or "additive")
    model = Captioner(config, vocab).eval()
    transform = eval_transform(64, model.encoder.spec.mean, model.encoder.spec.std)
    with torch.no_grad():
        features = model.encoder(torch.stack([transform(to_rgb(im)) for im in images]))
        x = features.mean(1) if decoder == "show-tell" else features.flatten(0, 1)
        norm = model.decoder.standardize  # standardise these images' features, so that captions depend on them
        norm.running_mean.copy_(x.mean(0))
        norm.running_var.copy_(x.var(0) + 1e-6)
        model.decoder.out.weight.mul_(2)
        model.decoder.out.bias[END] -= 1
    folder = tmp_path_factory.mktemp(request.param.replace(":", "-"))
    model.save(folder / "run")
    return model, export_onnx(folder / "run", folder / "onnx")


def test_export_writes_graphs_with_a_batch_axis_and_the_settings(exported: tuple[Captioner, Path]) -> None:
    model, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["encoder.onnx", "start.onnx", "step.onnx", "config.json", "vocab.json", "preprocess.json", "README.md"])
    step = ort.InferenceSession(str(folder / "step.onnx"))
    assert all(i.shape[0] == "batch" for i in step.get_inputs() + step.get_outputs())
    settings = json.loads((folder / "preprocess.json").read_text())
    assert settings["mean"] == list(model.encoder.spec.mean) and settings["image_size"] == 64


def test_preprocessing_matches_eval_transform(images: list[Image.Image]) -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    transform = eval_transform(64, mean, std)
    for im in images:
        assert np.allclose(preprocess(im, 64, mean, std), transform(to_rgb(im)).numpy(), atol=1e-6)


def test_features_and_step_log_probs_agree(exported: tuple[Captioner, Path], images: list[Image.Image]) -> None:
    model, folder = exported
    runner = load_onnx(folder)
    x = np.stack([preprocess(im, 64, model.encoder.spec.mean, model.encoder.spec.std) for im in images])
    with torch.no_grad():
        features = model.encoder(torch.from_numpy(x))
        state = model.decoder.start(features)
        tokens = torch.full((len(x),), START)
        for _ in range(3):  # a few steps in: the state has moved away from the start
            log_probs, state, alpha = model.decoder.step(tokens, state)
            tokens = log_probs[:, 4:].argmax(-1) + 4
        log_probs, _, alpha = model.decoder.step(tokens, state)
    onnx_features = runner.encoder.run(None, {"images": x})[0]
    assert np.abs(onnx_features - features.numpy()).max() < 1e-4
    onnx_log_probs, _, onnx_alpha = runner.step(tokens.numpy(), [s.numpy() for s in state])
    finite = np.isfinite(onnx_log_probs)  # the runner rules out <pad>, <start>, <unk>
    assert finite.sum() == onnx_log_probs.size - 3 * len(x)
    assert np.abs(onnx_log_probs[finite] - log_probs.numpy()[finite]).max() < 1e-4
    assert (alpha is None) == (onnx_alpha is None)
    if alpha is not None:
        assert np.abs(onnx_alpha - alpha.numpy()).max() < 1e-4


@pytest.mark.parametrize(("beam", "length_penalty", "options"), [
    (1, 0.0, {}), (3, 0.0, {}), (3, 2.0, {}), (1, 0.0, dict(block_ngram=2)), (1, 0.0, dict(bad_endings=True)),
    (3, 1.0, dict(block_ngram=3, bad_endings=True)), (1, 0.0, dict(sample=True, n=3, seed=0, temperature=0.8, top_k=5,
                                                                   top_p=0.9)),
    (1, 0.0, dict(sample=True, n=2, seed=1, block_ngram=1, bad_endings=True)), (4, 2.0, dict(groups=2, diversity=2.0))])
def test_onnx_captions_equal_pytorch_captions(exported: tuple[Captioner, Path], images: list[Image.Image],
                                              beam: int, length_penalty: float, options: dict) -> None:
    model, folder, search = *exported, Search(beam, length_penalty=length_penalty, **options)
    expected = model.caption(images, search)
    got = load_onnx(folder).caption(images, search, batch_size=4)
    assert [[c.text for c in row] for row in got] == [[c.text for c in row] for row in expected]
    for field in ("score", "log_prob"):
        assert [getattr(c, field) for row in got for c in row] == pytest.approx(
            [getattr(c, field) for row in expected for c in row], abs=1e-4)
    texts = [c.text for row in expected for c in row]
    assert len(set(texts)) > 1 and all(texts)  # the captions depend on the image; none is empty
    if options:  # each option changes some captions of these images
        assert texts != [c.text for row in model.caption(images, Search(beam, length_penalty=length_penalty))
                         for c in row]
    if (beam == 1 or length_penalty) and not options:  # (the best raw beam scores are one word with random weights)
        assert all(len(t.split()) >= 3 for t in texts)
    for row_got, row_expected in zip(got, expected, strict=True):
        for c_got, c_expected in zip(row_got, row_expected, strict=True):
            if c_expected.attention is None:
                assert c_got.attention is None
            else:
                assert np.abs(c_got.attention - c_expected.attention.numpy()).max() < 1e-4


def test_the_runners_graphs_do_not_spin_while_another_runs(exported: tuple[Captioner, Path]) -> None:
    runner = load_onnx(exported[1])
    for session in (runner.encoder, runner.start, runner.step_graph):  # spinning pools slowed a caption 2.4x
        assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_the_runner_needs_no_torch(exported: tuple[Captioner, Path], images: list[Image.Image], tmp_path) -> None:
    model, folder = exported
    paths = []
    for i, im in enumerate(images[:3]):
        im.save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    script = ("import json, sys\n"
              "sys.modules['torch'] = None  # any import of torch now fails\n"
              "from captioner.export.runner import load_onnx\n"
              "from captioner.data.rgb import load_rgb\n"
              "from captioner.search import Search\n"
              f"rows = load_onnx({str(folder)!r}).caption([load_rgb(p) for p in {paths!r}], Search(beam=2))\n"
              "print(json.dumps([[c.text for c in row] for row in rows]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    expected = model.caption([load_rgb(p) for p in paths], Search(beam=2))
    assert json.loads(done.stdout) == [[c.text for c in row] for row in expected]


def test_cli_exports_and_captions_and_the_server_serves_onnx(exported: tuple[Captioner, Path],
                                                             images: list[Image.Image], tmp_path) -> None:
    model, folder = exported
    run = folder.parent / "run"
    runner = CliRunner()
    done = runner.invoke(app, ["export", "--model", str(run), "--onnx", str(tmp_path / "onnx")])
    assert done.exit_code == 0, done.output
    images[0].save(tmp_path / "a.png")
    done = runner.invoke(app, ["caption", "--model", str(tmp_path / "onnx"), "--runtime", "onnx", "--beam", "1",
                               "--block-ngram", "0", "--allow-bad-endings", str(tmp_path / "a.png")])  # plain greedy
    assert done.exit_code == 0, done.output
    assert done.output.strip().endswith("\t" + model.caption([images[0]])[0][0].text)
    done = runner.invoke(app, ["caption", "--model", str(run), "--runtime", "tensorflow", str(tmp_path / "a.png")])
    assert done.exit_code == 2 and "torch, int8 or onnx" in done.output
    with TestClient(create_app(tmp_path / "onnx", runtime="onnx")) as client:
        r = client.post("/v1/captions", files=[("files", ("a.png", (tmp_path / "a.png").read_bytes(), "image/png"))])
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["captions"][0]["text"] == model.caption([images[0]])[0][0].text


def test_a_folder_without_the_graphs_names_what_is_missing(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="encoder.onnx.*captioner export --onnx"):
        load_onnx(tmp_path)


def test_the_runner_refuses_another_models_vocabulary(exported: tuple[Captioner, Path], tmp_path) -> None:
    model, folder = exported
    copy = tmp_path / "onnx"
    shutil.copytree(folder, copy)
    assert json.loads((copy / "config.json").read_text())["vocab_sha256"] == model.vocab.sha256()
    Vocabulary(model.vocab.itos[:4] + model.vocab.itos[:3:-1]).save(copy / "vocab.json")
    with pytest.raises(ValueError, match=r"onnx/vocab.json is not the vocabulary of .*onnx/config.json"):
        load_onnx(copy)
