"""The web page in a real browser (Debian's chromium via Playwright): upload a COCO photo, see its captions, point
at a word and see its attention map over the photo."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from captioner.data.vocab import END, Vocabulary
from captioner.inference import Captioner
from captioner.models.captioner import ModelConfig
from captioner.search import Search
from captioner.serve.app import create_app, running

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def test_upload_in_browser(shared: Path, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    photo = sorted((shared / "data/coco-mini/val2017").glob("*.jpg"))[0]
    v = Vocabulary.build(["a red circle on the left", "a blue square above a green triangle"], threshold=1)
    model = Captioner(ModelConfig(vocab_size=len(v), decoder="attention", backbone="resnet18", encoder_weights="none",
                                  image_size=64, grid=3, max_len=5), v)
    with torch.no_grad():
        model.decoder.out.bias[END] = -50  # an untrained model that never ends: five words to point at
    model.save(tmp_path / "model")
    shot = tmp_path / "serve.png"
    app = create_app(tmp_path / "model", Search(beam=3, length_penalty=1.0))
    with running(app) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(url)
            page.wait_for_function("document.querySelector('#model').textContent.includes('attention')")
            page.set_input_files("#file", photo)
            page.wait_for_selector("#captions li", timeout=30_000)
            page.wait_for_function("document.querySelector('#preview').naturalWidth > 0")
            page.screenshot(path=shot, full_page=True)
            assert page.locator("#captions li").count() == 3  # the page asks for 3 alternatives
            assert "ms" in page.locator("#latency").inner_text()
            assert page.locator("#error").inner_text() == ""
            score = page.locator("#captions li:first-child .score").inner_text()  # what orders them, and the raw one
            assert "(length-normalised)" in score and "log-prob" in score, score
            word = page.locator("#captions li:first-child .word").first
            assert not page.locator("#overlay").is_visible()
            word.hover()  # the attention map of the word appears over the photo
            page.wait_for_selector("#overlay", state="visible", timeout=5_000)
            box, photo_box = page.locator("#overlay").bounding_box(), page.locator("#preview").bounding_box()
            assert box["width"] > 20 and photo_box["y"] <= box["y"] <= photo_box["y"] + photo_box["height"]
            page.screenshot(path=tmp_path / "hover.png", full_page=True)
            page.mouse.move(0, 0)
            page.wait_for_selector("#overlay", state="hidden", timeout=5_000)
        finally:
            browser.close()
    if artifacts := os.environ.get("CAPTIONER_ARTIFACTS"):
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "serve.png")
        shutil.copy(tmp_path / "hover.png", Path(artifacts) / "serve_attention.png")
