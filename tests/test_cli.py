"""The `captioner` command end to end, in process, on tiny synthetic data and the real COCO files."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from captioner import recipe
from captioner.cli import app
from captioner.data.vocab import END, Vocabulary
from captioner.inference import Captioner, load
from captioner.models.captioner import ModelConfig
from captioner.search import Search

runner = CliRunner()
COMMANDS = ("synth", "inspect", "vocab", "train", "caption", "evaluate", "score", "serve", "demo")


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    result = invoke("synth", "--out", out, "--train", 12, "--val", 4, "--test", 6, "--size", 64)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def model(synth, tmp_path_factory) -> Path:
    records = json.loads((synth / "annotations" / "captions_train.json").read_text())["annotations"]
    vocab = Vocabulary.build([a["caption"] for a in records], threshold=1)
    config = ModelConfig(vocab_size=len(vocab), decoder="show-tell",
                         backbone="resnet18", encoder_weights="none", image_size=64,
                         embed_size=16, hidden_size=32)
    return Captioner(config, vocab).save(tmp_path_factory.mktemp("model") / "m")


def test_help_lists_every_command() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert re.search(rf"\b{command}\b", result.output), command


@pytest.mark.parametrize("command", ["train", "caption", "evaluate"])
def test_help_without_a_terminal_names_every_option_whole_at_80_columns(command: str) -> None:
    """rich cut names at 80 columns (``--label-smoothi…``) and dropped the backbone choices when piped."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    params = typer.main.get_command(app).commands[command].params
    names = [name for param in params if param.param_type_name == "option"
             for name in param.opts + param.secondary_opts]
    assert len(names) > 15
    for name in names:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", result.output), (name, result.output)
    assert all(len(line) <= 80 for line in result.output.splitlines())
    assert "…" not in result.output and not re.search(r"\w-\n", result.output)  # nor a name broken at its hyphen
    headings = [line for line in result.output.splitlines() if line.endswith(":") and not line.startswith(" ")]
    expected = {"train": ["Data:", "Model:", "Training:", "Search and validation:", "Output:", "Other options:"],
                "caption": ["Arguments:", "Model:", "Search:", "Output:", "Other options:"],
                "evaluate": ["Data:", "Model:", "Search:", "Scoring and output:", "Other options:"]}
    assert headings == expected[command]
    if command == "train":
        assert "wide_resnet50_2" in result.output


def test_synth_is_deterministic_and_readable(synth, tmp_path) -> None:
    again = tmp_path / "again"
    invoke("synth", "--out", again, "--train", 12, "--val", 4, "--test", 6, "--size", 64)
    for file in sorted(synth.rglob("*.*")):
        assert file.read_bytes() == (again / file.relative_to(synth)).read_bytes(), file
    result = invoke("inspect", "--data", synth, "--split", "test", "--grid", tmp_path / "grid.png", "--n", 4)
    assert result.exit_code == 0, result.output
    assert "usable images: 6" in result.output and "captions: 30" in result.output
    assert (tmp_path / "grid.png").stat().st_size > 1000


def test_bad_input_is_a_clear_error(tmp_path) -> None:
    result = invoke("inspect", "--data", tmp_path / "missing")
    assert result.exit_code == 2 and "not found" in result.output
    result = invoke("synth", "--out", tmp_path, "--size", 8)
    assert result.exit_code == 2 and "size" in result.output


@pytest.mark.parametrize("flags, words", [(["--data", "captions.txt", "--epochs", 3, "--grid", 5],
                                           "--epochs, --grid: only for the synthetic demo"),
                                          (["--families", "attention"], "--families: only for the demo with --data")])
def test_demo_refuses_flags_of_the_other_demo(tmp_path, flags: list, words: str) -> None:
    result = invoke("demo", "--out", tmp_path, *flags)
    assert result.exit_code == 2 and words in result.output, result.output
    assert not any(tmp_path.iterdir())  # nothing was started


def test_caption_and_evaluate(model, synth, tmp_path) -> None:
    images = sorted((synth / "test").glob("*.png"))[:3]
    result = invoke("caption", "--model", model, *images, "--beam", 2, "--grid", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    assert len([line for line in result.output.splitlines() if "\t" in line]) == 3
    assert (tmp_path / "c.png").is_file()
    result = invoke("evaluate", "--model", model, "--data", synth, "--split", "test", "--out", tmp_path,
                    "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert "CIDEr" in result.output
    results = json.loads((tmp_path / "results_test.json").read_text())
    assert len(results) == 6 and {"image_id", "caption"} <= results[0].keys()
    assert set(json.loads((tmp_path / "metrics_test.json").read_text())) >= {"Bleu_4", "METEOR", "CIDEr"}


def test_caption_json_gives_the_n_best_with_their_tokens_and_per_word_log_probabilities(model, synth) -> None:
    images = sorted((synth / "test").glob("*.png"))[:2]
    result = invoke("caption", "--model", model, *images, "--json", "--beam", 3, "--n-best", 3)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["file"] for line in lines] == [str(p) for p in images]
    for line in lines:
        caps = line["captions"]
        assert len(caps) == 3 and line["error"] is None
        assert [c["score"] for c in caps] == sorted((c["score"] for c in caps), reverse=True)
        for c in caps:
            assert {"text", "score", "log_prob", "tokens", "word_log_probs"} == c.keys()  # no attention unasked
            assert len(c["tokens"]) == len(c["word_log_probs"])
            assert " ".join(t for t in c["tokens"] if t != "<end>") == c["text"]
            assert sum(c["word_log_probs"]) == pytest.approx(c["log_prob"], abs=1e-4)
    result = invoke("caption", "--model", model, *images, "--beam", 4, "--groups", 2, "--diversity", 10,
                    "--n-best", 4)
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.output.splitlines()]
    assert [r[1] for r in rows] == ["1", "2", "3", "4"] * 2
    for image in images:  # four different captions of every image
        assert len({r[3] for r in rows if r[0] == str(image)}) == 4
    result = invoke("caption", "--model", model, *images, "--beam", 3, "--n-best", 4)
    assert result.exit_code == 2 and "--n-best 4: the search keeps 3" in result.output


def test_caption_and_evaluate_with_an_ensemble_of_a_model_with_itself(model, synth, tmp_path) -> None:
    images = sorted((synth / "test").glob("*.png"))[:3]
    alone = invoke("caption", "--model", model, *images)
    twice = invoke("caption", "--model", model, "--model", model, *images)
    assert twice.exit_code == 0 and twice.output == alone.output
    result = invoke("evaluate", "--model", model, "--model", model, "--data", synth, "--split", "test", "--no-java")
    assert result.exit_code == 2 and "give --out" in result.output
    result = invoke("evaluate", "--model", model, "--model", model, "--data", synth, "--split", "test", "--no-java",
                    "--out", tmp_path, "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert f"{model.name} + {model.name} (test, beam" in result.output


def test_caption_search_flags_and_attention_maps(model, synth, tmp_path) -> None:
    images = sorted((synth / "test").glob("*.png"))[:2]
    result = invoke("caption", "--model", model, *images, "--beam", 3, "--max-len", 3, "--length-penalty", 0.7)
    assert result.exit_code == 0, result.output
    assert all(len(line.split("\t")[1].split()) <= 3 for line in result.output.splitlines() if "\t" in line)
    result = invoke("caption", "--model", model, *images, "--attention", tmp_path / "maps.png")
    assert result.exit_code == 2 and "attention model" in result.output
    records = json.loads((synth / "annotations" / "captions_train.json").read_text())["annotations"]
    vocab = Vocabulary.build([a["caption"] for a in records], threshold=1)
    config = ModelConfig(vocab_size=len(vocab), decoder="attention", backbone="resnet18", encoder_weights="none",
                         image_size=64, grid=3, embed_size=16, hidden_size=32, max_len=5)
    attentive = Captioner(config, vocab).save(tmp_path / "att")
    result = invoke("caption", "--model", attentive, *images, "--attention", tmp_path / "maps.png")
    assert result.exit_code == 0, result.output
    assert "attention maps" in result.output and (tmp_path / "maps.png").stat().st_size > 5000


def test_caption_reads_the_images_in_a_folder_and_reports_an_empty_one(model, synth, tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    sources = sorted((synth / "test").glob("*.png"))[:3]
    for i, src in enumerate(sources):
        (folder / f"{i}.{('png', 'JPG', 'webp')[i]}").write_bytes(src.read_bytes())  # any extension Pillow knows
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()  # not recursive
    result = invoke("caption", "--model", model, folder)
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[0] for line in result.output.splitlines()] == [
        str(folder / n) for n in ("0.png", "1.JPG", "2.webp")]
    result = invoke("caption", "--model", model, folder / "sub", sources[0])
    assert result.exit_code == 1 and "sub: a folder without image files" in result.output
    assert f"{sources[0]}\t" in result.output


def test_caption_of_a_folder_decodes_a_chunk_at_a_time(model, synth, tmp_path, monkeypatch) -> None:
    """40 photos: about one chunk (8) of decoded images alive at once, each captioned in order (it decoded all 40
    before captioning any: memory grew with the number of files)."""
    import gc
    import weakref

    import captioner.data.rgb

    folder, source = tmp_path / "photos", sorted((synth / "test").glob("*.png"))[0]
    folder.mkdir()
    for i in range(40):
        (folder / f"{i:02d}.png").write_bytes(source.read_bytes())
    load_rgb, alive, peak = captioner.data.rgb.load_rgb, [0], [0]

    def counted(path: Path) -> Image.Image:
        gc.collect()  # what is alive is what is still referenced
        image = load_rgb(path)
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(image, lambda: alive.__setitem__(0, alive[0] - 1))
        return image

    monkeypatch.setattr(captioner.data.rgb, "load_rgb", counted)
    result = invoke("caption", "--model", model, folder, "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["file"] for line in lines] == [str(folder / f"{i:02d}.png") for i in range(40)]
    assert len({line["captions"][0]["text"] for line in lines}) == 1  # the same photo, the same caption
    assert peak[0] <= 8 + 1, peak  # a chunk, and the chunk before's last image, which the caller's loop still names


def test_int8_runtime_captions_and_a_wrong_runtime_names_the_choices(model, synth) -> None:
    images = sorted((synth / "test").glob("*.png"))[:3]
    result = invoke("caption", "--model", model, *images, "--runtime", "int8", "--beam", 2)
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[0] for line in result.output.splitlines()] == [str(p) for p in images]
    result = invoke("caption", "--model", model, *images, "--runtime", "int4")
    assert result.exit_code == 2 and "choose torch, int8 or onnx" in result.output


def test_evaluate_with_a_foreign_vocabulary_names_the_file(model, synth, tmp_path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "word"]).save(broken / "vocab.json")
    result = invoke("evaluate", "--model", broken, "--data", synth)
    assert result.exit_code == 2 and "vocab.json" in result.output


def test_real_coco_inspect_vocab_and_caption(shared, model, tmp_path) -> None:
    mini = shared / "data" / "coco-mini"
    result = invoke("inspect", "--coco", mini / "annotations" / "captions_val2017.json", "--images",
                    mini / "val2017", "--split", "val")
    assert result.exit_code == 0, result.output
    assert "usable images: 79" in result.output and "captions: 395" in result.output
    assert "80 no captions" in result.output
    refs = shared / "data" / "coco-val2014-captions" / "captions_val2014_4refs.json"
    result = invoke("vocab", "--data", refs, "--split", "val", "--threshold", 5, "--out", tmp_path / "v.json")
    assert result.exit_code == 0, result.output
    size = int(re.search(r"vocabulary: (\d+) words", result.output).group(1))
    assert size == len(Vocabulary.load(tmp_path / "v.json")) > 5000
    photos = sorted((mini / "val2017").glob("*.jpg"))[:5] + [mini / "val2017" / "000000431848.jpg"]  # grayscale
    result = invoke("caption", "--model", model, *photos)
    assert result.exit_code == 0, result.output
    assert len([line for line in result.output.splitlines() if "\t" in line]) == 6


def test_evaluate_a_fine_tuned_model_encodes_pixels(synth, tmp_path) -> None:
    records = json.loads((synth / "annotations" / "captions_train.json").read_text())["annotations"]
    vocab = Vocabulary.build([a["caption"] for a in records], threshold=1)
    config = ModelConfig(vocab_size=len(vocab), decoder="show-tell",
                         backbone="resnet18", encoder_weights="none", image_size=64,
                         embed_size=16, hidden_size=32, fine_tune=True)
    model = Captioner(config, vocab).save(tmp_path / "tuned")
    first = sorted((synth / "test").iterdir())[0]
    first.rename(tmp_path / "gone.png")
    try:
        result = invoke("evaluate", "--model", model, "--data", synth, "--split", "test", "--cache-dir",
                        tmp_path / "cache")
    finally:
        (tmp_path / "gone.png").rename(first)
    assert result.exit_code == 0, result.output
    assert "1 missing file" in result.output and len(json.loads((model / "results_test.json").read_text())) == 5


def _copy(model: Path, folder: Path) -> Path:
    folder.mkdir()
    for f in model.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def test_a_truncated_or_mistyped_artifact_is_a_clear_error(model, synth, tmp_path) -> None:
    image = sorted((synth / "test").glob("*.png"))[0]
    cut = _copy(model, tmp_path / "cut")
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    result = invoke("caption", "--model", cut, image)
    assert result.exit_code == 2 and f"{weights} is not a readable safetensors file" in result.output, result.output
    typed = _copy(model, tmp_path / "typed")
    config = json.loads((typed / "config.json").read_text())
    (typed / "config.json").write_text(json.dumps({**config, "grid": "5"}))
    result = invoke("caption", "--model", typed, image)
    assert result.exit_code == 2, result.output
    assert f"{typed / 'config.json'}: 'grid' must be an integer, got '5'" in result.output


@pytest.mark.parametrize("max_len", [0, -1])
def test_max_len_below_one_is_a_clear_error(model, synth, tmp_path, monkeypatch, max_len) -> None:
    import captioner.serve.app

    monkeypatch.setattr(captioner.serve.app, "serve", lambda *a, **k: None)  # never binds a port
    image = sorted((synth / "test").glob("*.png"))[0]
    commands = [("caption", "--model", model, image), ("evaluate", "--model", model, "--data", synth),
                ("serve", "--model", model), ("train", "--data", synth, "--out", tmp_path / "run")]
    for command in commands:
        result = invoke(*command, "--max-len", max_len)
        assert result.exit_code == 2 and "Invalid value for '--max-len'" in result.output, result.output
    with pytest.raises(ValueError, match=r"--max-len \(max_len\) must be >= 1"):  # the library too: 0 is not None
        load(model).caption([Image.open(image)], Search(max_len=max_len))


def test_a_runs_vocabulary_records_the_threshold_it_was_built_with(synth, tmp_path) -> None:
    run = tmp_path / "run"
    result = invoke("train", "--data", synth, "--out", run, "--backbone", "resnet18", "--encoder-weights", "none",
                    "--image-size", 32, "--grid", 1, "--embed-size", 8, "--hidden-size", 8, "--epochs", 1,
                    "--batch-size", 16, "--val-images", 2, "--threshold", 3, "--cache-dir", tmp_path / "cache",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    vocab = Vocabulary.load(run / "vocab.json")
    records = json.loads((synth / "annotations" / "captions_train.json").read_text())["annotations"]
    assert vocab.threshold == 3 and vocab.itos == Vocabulary.build([a["caption"] for a in records], 3).itos
    assert "(threshold 3; English (en), Treebank words)" in result.output and "guessed" in result.output


def test_caption_evaluate_and_serve_take_the_search_options(model, synth, tmp_path, monkeypatch) -> None:
    import captioner.serve.app

    images = sorted((synth / "test").glob("*.png"))[:2]
    wordy = load(model)
    with torch.no_grad():
        wordy.decoder.out.bias[END] = -1e4  # never ends: 8 words of random weights, which repeat
    wordy = wordy.save(tmp_path / "wordy")
    for flags, repeated in (([], True), (["--block-ngram", 1, "--no-bad-endings"], False)):
        result = invoke("caption", "--model", wordy, *images, "--max-len", 8, *flags)
        assert result.exit_code == 0, result.output
        captions = [line.split("\t")[1].split() for line in result.output.splitlines() if "\t" in line]
        assert len(captions) == 2 and any(len(set(c)) < len(c) for c in captions) == repeated, captions
        assert repeated or all(c[-1] not in ("a", "the", "of", "on") for c in captions)
    sampled = [invoke("caption", "--model", wordy, *images, "--max-len", 8, "--sample", "--n", 3, "--seed", seed,
                      "--temperature", 2).output for seed in (4, 4, 5)]
    assert sampled[0] == sampled[1] != sampled[2] and sampled[0].count("\t") == 2, sampled
    result = invoke("evaluate", "--model", model, "--data", synth, "--split", "test", "--out", tmp_path,
                    "--cache-dir", tmp_path / "cache", "--no-java", "--beam", 2, "--block-ngram", 2, "--groups", 2,
                    "--diversity", 1)
    assert result.exit_code == 0, result.output
    served = {}
    monkeypatch.setattr(captioner.serve.app, "serve", lambda *a, **k: served.update(k))  # never binds a port
    assert invoke("serve", "--model", model, "--sample", "--top-k", 5).exit_code == 0
    assert served["search"] == replace(recipe.SEARCH, beam=1, sample=True, top_k=5)  # the recipe's rules and penalty
    for flags, words in ((["--block-ngram", -1], "--block-ngram (block_ngram) must be >= 0"),
                         (["--top-k", 3], "add --sample"), (["--sample", "--beam", 2], "leave --beam"),
                         (["--sample", "--top-p", 0], "--top-p (top_p) must be in (0, 1]"),
                         (["--diversity", 0.5], "add --groups")):
        for command in (("caption", "--model", model, images[0]), ("serve", "--model", model),
                        ("evaluate", "--model", model, "--data", synth)):
            result = invoke(*command, *flags)
            assert result.exit_code == 2 and words in result.output, (command, flags, result.output)


@pytest.mark.parametrize(("flags", "params"), [
    ([], {}), (["--beam", 4, "--groups", 2, "--diversity", 1.5], dict(beam=4, groups=2, diversity=1.5)),
    (["--beam", 2, "--block-ngram", 2, "--allow-bad-endings"], dict(beam=2, block_ngram=2, bad_endings="false")),
    (["--beam", 1, "--sample", "--n", 3, "--seed", 7, "--temperature", 0.7, "--top-k", 5, "--top-p", 0.9],
     dict(beam=1, sample="true", n=3, seed=7, temperature=0.7, top_k=5, top_p=0.9))])
def test_the_search_flags_and_the_http_api_build_the_same_search(model, synth, monkeypatch, flags, params) -> None:
    """`captioner serve` with the flags, and a request with the same settings to a server started without them."""
    from fastapi.testclient import TestClient

    import captioner.serve.app

    served = {}
    monkeypatch.setattr(captioner.serve.app, "serve", lambda *a, **k: served.update(k))  # never binds a port
    flagged = [served["search"] for f in ([], flags) if invoke("serve", "--model", model, *f).exit_code == 0]
    assert len(flagged) == 2 and flagged[0] == recipe.SEARCH
    app, asked = captioner.serve.app.create_app(model, flagged[0]), []
    caption = app.state.model.caption
    monkeypatch.setattr(app.state.model, "caption", lambda images, search, **kw: asked.append(search) or caption(
        images, search, **kw))
    image = sorted((synth / "test").glob("*.png"))[0]
    with TestClient(app) as client:
        r = client.post("/v1/captions", params=params, files={"files": (image.name, image.read_bytes())})
    assert r.status_code == 200 and asked == [flagged[1]], r.text


def test_a_model_trained_on_the_synthetic_shapes_says_so(synth, tmp_path) -> None:
    from captioner.data.datasets import describe
    from captioner.models.config import SYNTHETIC

    assert describe(synth) == SYNTHETIC  # what train() records as the model's trained_on
    synth_model = _tiny(synth, tmp_path, SYNTHETIC)
    assert load(synth_model).config.synthetic_warning()
    image = sorted((synth / "test").glob("*.png"))[0]
    result = invoke("caption", "--model", synth_model, image)
    assert result.exit_code == 0 and "trained on captioner's synthetic shapes" in result.output
    result = invoke("caption", "--model", _tiny(synth, tmp_path, "Flickr8k.token.txt"), image)
    assert result.exit_code == 0 and "synthetic" not in result.output


def _tiny(synth: Path, tmp_path: Path, trained_on: str) -> Path:
    records = json.loads((synth / "annotations" / "captions_train.json").read_text())["annotations"]
    vocab = Vocabulary.build([a["caption"] for a in records], threshold=1)
    config = ModelConfig(vocab_size=len(vocab), decoder="show-tell",
                         backbone="resnet18", encoder_weights="none", image_size=64,
                         embed_size=16, hidden_size=32, trained_on=trained_on)
    return Captioner(config, vocab).save(tmp_path / trained_on.replace(" ", "_"))
