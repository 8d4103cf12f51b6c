"""Captions in other languages: tokenizers and joining, vocabularies and readers on the shared Chinese and German
files, metrics on each language's words, the SCST reward's ids, diagnostics, pictures and the API in Chinese."""
from __future__ import annotations

import json
import unicodedata
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from test_serve import image_bytes
from typer.testing import CliRunner

from captioner.cli import app
from captioner.data.datasets import open_split
from captioner.data.tokenizers import get_tokenizer, guess_language
from captioner.data.vocab import END, START, UNK, Vocabulary
from captioner.evaluation.diagnostics import diagnose
from captioner.evaluation.metrics import metric_note, score_captions
from captioner.inference import Captioner, load
from captioner.models.captioner import ModelConfig
from captioner.serve.app import DEFAULT, create_app
from captioner.training.rewards import reference_ids

ZH, CHARS, DE = get_tokenizer("zh"), get_tokenizer("zh", "char"), get_tokenizer("de")
HANZI = "一个穿着泳装的女人躺在海水里对恋人公园河边拥抱马场小女孩牵着匹火堆旁狗草地上玩耍跑男孩红色衣服"
CN = Path("data/flickr8k/Flickr8k-CN/flickr8kzhc.caption.txt")
DE_FILE = Path("data/flickr8k/Multi30k-de/Flickr8k.de.token.txt")
IMAGES = Path("data/flickr8k/Flicker8k_Dataset")


@pytest.mark.parametrize("tokenizer", [ZH, CHARS], ids=["jieba", "char"])
def test_chinese_decode_of_encode_is_the_text_without_its_spaces(tokenizer) -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):  # random strings of hanzi and spaces
        text = "".join(rng.choice(list(HANZI + "   "), size=int(rng.integers(0, 25))))
        vocab = Vocabulary.build([text], threshold=1, tokenizer=tokenizer)
        assert vocab.decode(vocab.encode(text)) == text.replace(" ", ""), text
        assert all(" " not in w for w in tokenizer.split(text))


def test_chinese_words_drop_punctuation_and_keep_latin_words_apart() -> None:
    assert ZH.split("一个穿着泳装的女人躺在海水里。") == "一个 穿着 泳装 的 女人 躺 在 海水 里".split()
    assert CHARS.split("两只狗，在草地上！") == list("两只狗在草地上")
    assert ZH.join(["穿", "t恤", "的", "nba", "球员"]) == "穿t恤的nba球员"
    assert ZH.join(["new", "york", "的", "街道"]) == "new york的街道"  # a space only between two Latin words


def test_german_words_keep_umlauts_and_eszett() -> None:
    text = "Ein Mädchen überquert die Straße, im T-Shirt."
    assert DE.split(text) == ["ein", "mädchen", "überquert", "die", "straße", "im", "t-shirt"]
    assert DE.split(unicodedata.normalize("NFD", text)) == DE.split(text)  # decomposed umlauts: the same words
    vocab = Vocabulary.build([text], threshold=1, tokenizer=DE)
    assert vocab.decode(vocab.encode(text)) == "ein mädchen überquert die straße im t-shirt"


def test_unknown_languages_and_tokenizers_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown language 'xx': choose from en, zh, de"):
        get_tokenizer("xx")
    with pytest.raises(ValueError, match=r"tokenizer 'char' is not one for German \(de\): choose from unicode"):
        get_tokenizer("de", "char")
    path = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "狗"], tokenizer=CHARS).save(tmp_path / "vocab.json")
    assert json.loads(path.read_text(encoding="utf-8"))["tokenizer"] == "char"
    assert Vocabulary.load(path).tokenizer == CHARS
    path.write_text(json.dumps({"itos": ["<pad>", "<start>", "<end>", "<unk>"], "language": "klingon"}))
    with pytest.raises(ValueError, match="vocab.json: unknown language 'klingon'"):
        Vocabulary.load(path)


def test_the_language_is_guessed_from_the_captions() -> None:
    assert guess_language(["一只狗在草地上跑。", "两个男孩在踢足球"])[0] == "zh"
    assert guess_language(["Ein Hund läuft über eine Wiese.", "Zwei Jungen spielen mit dem Ball"])[0] == "de"
    assert guess_language(["A dog runs across the grass.", "Two boys play with a ball"])[0] == "en"


def test_metrics_score_chinese_words_and_say_so() -> None:
    refs = {1: ["一只狗在草地上奔跑。", "狗在草地上跑"], 2: ["两个男孩在踢足球", "男孩们在踢球"]}
    results = {1: "一只狗在草地上跑", 2: "两个女孩在踢足球"}
    scores = score_captions(results, refs, java=False, tokenizer=ZH)
    # whole sentences as one "word" (the PTB tokenizer's view of unspaced text) share no unigram with the references
    assert scores["Bleu_1"] > 70 and scores["CIDEr"] > 0 and "METEOR" not in scores
    same = score_captions({1: refs[1][1], 2: refs[2][0]}, refs, java=False, tokenizer=ZH)
    assert same["Bleu_4"] > 99
    assert "jieba words" in metric_note(ZH) and "METEOR left out" in metric_note(ZH)


def test_german_meteor_runs_with_the_german_language() -> None:
    import shutil

    if shutil.which("java") is None:
        pytest.skip("java is not installed: no METEOR")
    refs = {1: ["Ein kleines Mädchen klettert über eine Treppe in eine Holzhütte."], 2: ["Zwei Hunde spielen im Gras."]}
    same = score_captions({1: refs[1][0], 2: refs[2][0]}, refs, tokenizer=DE)
    stems = score_captions({1: "ein kleines mädchen kletterte über die treppe", 2: "zwei hunde spielen"}, refs,
                           tokenizer=DE)
    assert same["METEOR"] > 95 and 20 < stems["METEOR"] < same["METEOR"]
    assert "-l de" in metric_note(DE)


def test_reward_ids_and_diagnostics_use_the_language_words() -> None:
    vocab = Vocabulary.build(["一只狗在草地上跑", "一个男人在"], threshold=1, tokenizer=ZH)
    assert UNK not in reference_ids(vocab, ["一只狗在草地上跑。"])[0]
    assert [vocab.itos[i] for i in reference_ids(vocab, ["一只狗在草地上跑"])[0]] == ZH.split("一只狗在草地上跑")
    captions = ["一只狗在草地上跑", "一个男人在", "一只狗在草地上跑。"]
    d = diagnose(captions, tokenizer=ZH)
    assert d["bad_endings"] == pytest.approx(100 / 3) and d["distinct"] == pytest.approx(200 / 3)
    assert d["mean_len"] == pytest.approx((2 * len(ZH.split(captions[0])) + 3) / 3) and d["vocab_used"] > 5
    assert diagnose(["ein hund auf einer"], tokenizer=DE)["bad_endings"] == 100


def test_chinese_vocabulary_on_the_shared_file(shared: Path) -> None:
    records, report = open_split(shared / CN, "train", shared / IMAGES, check_images=False)
    assert len(records) == 6000 and "from " + str(shared / "data" / "flickr8k") in report.summary()
    captions = [c for r in records for c in r.captions]
    counts = Counter(w for c in captions for w in ZH.split(c))
    vocab = Vocabulary.build(captions, threshold=5, tokenizer=ZH)
    assert set(vocab.itos[4:]) == {w for w, n in counts.items() if n >= 5}
    assert len(vocab) == 1473 and vocab.itos[4:7] == ["的", "在", "一个"]  # measured; 4,746 words at threshold 1
    assert len(Vocabulary.build(captions, threshold=5, tokenizer=CHARS)) == 1018
    assert vocab.encode(records[0].captions[0])[1:-1].count(UNK) == 0


def test_readers_on_the_shared_chinese_and_german_files(shared: Path) -> None:
    zh_val, _ = open_split(shared / CN, "val", shared / IMAGES)
    assert len(zh_val) == 1000 and all(len(r.captions) == 5 for r in zh_val)
    de_train, report = open_split(shared / DE_FILE, "train", shared / IMAGES, check_images=False)
    de_val, _ = open_split(shared / DE_FILE, "val", shared / IMAGES, check_images=False)
    assert (len(de_train), len(de_val)) == (5528, 934)  # 6,462 of the 7,000 photos have German captions
    assert "472 images of the train list have no captions" in report.summary()
    first = next(r for r in de_train if r.path.name == "1000268201_693b08cb0e.jpg")
    assert first.captions[1] == "Ein kleines Mädchen im rosa Kleidchen klettert über eine Treppe in eine Holzhütte."
    result = CliRunner().invoke(app, ["inspect", "--data", str(shared / CN), "--images", str(shared / IMAGES)])
    assert result.exit_code == 0, result.output
    assert "guessed: 100% of 1000 captions hold Chinese characters" in result.output
    assert "duplicate captions (repeated within their image): 1477" in result.output
    assert "caption length (Chinese (zh), jieba words)" in result.output


def test_caption_grid_draws_chinese_with_a_cjk_font(tmp_path: Path) -> None:
    from captioner.plots import caption_grid, cjk_font

    if cjk_font() is None:
        pytest.skip("no CJK font installed (fonts-noto-cjk)")
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing from font(s)" for each box it draws
        caption_grid([tmp_path / "a.png"], [("一只狗在草地上跑", "ref: 两个男孩")], tmp_path / "grid.png")


def test_the_api_returns_chinese_text_in_utf8(tmp_path: Path) -> None:
    vocab = Vocabulary.build(["一只狗在草地上跑", "两个男孩在踢足球"], threshold=1, tokenizer=ZH)
    model = Captioner(ModelConfig(vocab_size=len(vocab), decoder="show-tell",
                                  backbone="resnet18", encoder_weights="none", image_size=64),
                      vocab)
    with torch.no_grad():
        model.decoder.out.bias[END] = -1e4  # random weights that never end: max_len words
        model.decoder.out.bias[START] = model.decoder.out.bias[UNK] = -1e4
    with TestClient(create_app(model.save(tmp_path / "zh"), replace(DEFAULT, max_len=5))) as client:
        r = client.post("/v1/captions", files=[("files", ("a.png", image_bytes("PNG"), "image/png"))])
        info = client.get("/v1/model").json()
    assert r.status_code == 200 and info["language"] == "Chinese (zh), jieba words"
    caption = r.json()["results"][0]["captions"][0]
    assert len(caption["words"]) == 5 and caption["text"] == "".join(caption["words"])
    assert all(w in vocab.stoi for w in caption["words"]) and " " not in caption["text"]
    assert caption["text"].encode("utf-8") in r.content  # raw UTF-8, not \\u escapes
    assert load(tmp_path / "zh").vocab.tokenizer == ZH
