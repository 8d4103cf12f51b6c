"""The HTTP service: captions for uploads, the OpenAPI schema, errors for bad input, micro-batching and load limits."""
from __future__ import annotations

import asyncio
import gc
import struct
import threading
import time
import weakref
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from test_images import MALFORMED_EXIF, halves_jpeg

from captioner.data.vocab import END, Vocabulary
from captioner.inference import Captioner, load
from captioner.models.captioner import ModelConfig
from captioner.search import Search
from captioner.serve import app as serve_app
from captioner.serve import batcher as serve_batcher
from captioner.serve.app import DEFAULT, create_app, running

T = TypeVar("T")

MAX_BYTES = 200_000
MAX_PIXELS = 1_000_000
MAX_REQUEST_PIXELS = 2_000_000


def image_bytes(fmt: str = "JPEG", mode: str = "RGB", size: tuple[int, int] = (96, 72), seed: int = 0) -> bytes:
    """A noisy image encoded in memory."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    buf = BytesIO()
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(buf, fmt)
    return buf.getvalue()


def png(image: Image.Image) -> bytes:
    buf = BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def blank_png(size: tuple[int, int], mode: str = "L") -> bytes:
    """A plain PNG: many pixels in few bytes."""
    buf = BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


def jpeg_with_exif(exif: bytes) -> bytes:
    """test_images.halves_jpeg in memory: 32 x 16, red left half, blue right half, with a raw EXIF block."""
    return halves_jpeg(BytesIO(), exif).getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` pixels but holds almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    v = Vocabulary.build(["a red circle on the left", "a blue square above a green triangle"], threshold=1)
    folder = tmp_path_factory.mktemp("serve") / "tiny-model"
    config = ModelConfig(vocab_size=len(v), decoder="show-tell",
                         backbone="resnet18", encoder_weights="none", image_size=64)
    Captioner(config, v).save(folder)
    (folder / "metrics_test.json").write_text('{"BLEU-4": 0.25, "CIDEr": 0.8}')
    return folder


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(model_dir, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, max_files=4,
                               max_request_pixels=MAX_REQUEST_PIXELS)) as c:
        yield c


def post(client: TestClient, *files: tuple[str, bytes], **params: int) -> tuple[int, dict]:
    r = client.post("/v1/captions", files=[("files", (name, data, "image/jpeg")) for name, data in files],
                    params=params)
    assert r.headers["content-type"] == "application/json"
    return r.status_code, r.json()


def test_caption_one_image(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", "captioner.serve"):
        status, body = post(client, ("photo.jpg", image_bytes()))
    assert "POST /v1/captions 200" in caplog.text
    assert status == 200, body
    assert body["model"] == "tiny-model" and body["latency_ms"] > 0
    [result] = body["results"]
    assert result["filename"] == "photo.jpg"
    [caption] = result["captions"]
    assert isinstance(caption["text"], str) and caption["score"] <= 0


def test_attention_maps_on_request(model_dir: Path, tmp_path: Path) -> None:
    v = Vocabulary.build(["a red circle on the left", "a blue square above a green triangle"], threshold=1)
    config = ModelConfig(vocab_size=len(v), decoder="attention", backbone="resnet18", encoder_weights="none",
                         image_size=64, grid=3, max_len=6)
    Captioner(config, v).save(tmp_path / "att")
    with TestClient(create_app(tmp_path / "att")) as c:
        assert c.get("/v1/model").json() | {"decoder": "attention", "grid": 3} == c.get("/v1/model").json()
        _, plain = post(c, ("photo.jpg", image_bytes()))
        assert plain["results"][0]["captions"][0]["attention"] is None  # only when asked
        status, body = post(c, ("photo.jpg", image_bytes()), attention=1, beam=2)
    assert status == 200, body
    for caption in body["results"][0]["captions"]:
        maps = np.array(caption["attention"])
        assert maps.shape[1:] == (3, 3) and len(caption["text"].split()) <= len(maps) <= 6
        assert np.allclose(maps.sum((1, 2)), 1, atol=1e-5)
    with TestClient(create_app(model_dir)) as c:  # a Show-Tell model has no maps to give
        assert post(c, ("photo.jpg", image_bytes()), attention=1)[1]["results"][0]["captions"][0]["attention"] is None


def test_many_files_and_modes(client: TestClient) -> None:
    files = [("gray.jpg", image_bytes("JPEG", "L")), ("alpha.png", image_bytes("PNG", "RGBA")),
             ("pic.webp", image_bytes("WEBP")), ("pic.gif", image_bytes("GIF"))]
    status, body = post(client, *files)
    assert status == 200, body
    assert [r["filename"] for r in body["results"]] == [name for name, _ in files]
    assert all(len(r["captions"]) == 1 and r["error"] is None for r in body["results"])


def test_a_bad_file_is_skipped_and_reported_the_others_captioned(client: TestClient,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    good, alone = image_bytes(), post(client, ("alone.jpg", image_bytes()))[1]["results"][0]["captions"]
    with caplog.at_level("WARNING", logger="captioner.serve"):
        status, body = post(client, ("empty.jpg", b""), ("ok.jpg", good), ("cut.jpg", good[:2000]),
                            ("notes.jpg", b"hello"))
    assert status == 200, body
    results = {r["filename"]: r for r in body["results"]}
    assert list(results) == ["empty.jpg", "ok.jpg", "cut.jpg", "notes.jpg"]
    assert results["ok.jpg"]["error"] is None and results["ok.jpg"]["captions"] == alone
    for name, words in (("empty.jpg", "empty"), ("cut.jpg", "truncated"), ("notes.jpg", "JPEG, PNG, WebP")):
        assert results[name]["captions"] == [] and words in results[name]["error"]
        assert any(name in m and words in m for m in caplog.messages)
    status, body = post(client, ("empty.jpg", b""), ("notes.jpg", b"hello"))  # nothing to caption: the first error
    assert status == 422 and "empty" in body["detail"]


def test_beam_gives_sorted_alternatives(client: TestClient) -> None:
    status, body = post(client, ("a.png", image_bytes("PNG")), beam=3)
    assert status == 200, body
    scores = [c["score"] for c in body["results"][0]["captions"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    form = client.post("/v1/captions", files={"files": ("a.png", image_bytes("PNG"))}, data={"beam": "2"})
    assert len(form.json()["results"][0]["captions"]) == 2


def test_search_options_in_the_query(model_dir: Path, tmp_path: Path) -> None:
    wordy = load(model_dir)
    with torch.no_grad():
        wordy.decoder.out.bias[END] = -1e4  # never ends: 8 words of random weights, which repeat
    photo = ("a.png", image_bytes("PNG"))
    with TestClient(create_app(wordy.save(tmp_path / "wordy"), replace(DEFAULT, max_len=8))) as client:
        for params, repeated in (({}, True), (dict(block_ngram=1, bad_endings="true"), False)):
            status, body = post(client, photo, beam=3, **params)
            assert status == 200, body
            words = [c["text"].split() for c in body["results"][0]["captions"]]
            assert any(len(set(w)) < len(w) for w in words) == repeated, words
            assert repeated or all(w[-1] not in ("a", "on", "the") for w in words)
        status, body = post(client, photo, beam=3, groups=3, diversity=10)
        assert status == 200 and len({c["text"].split()[0] for c in body["results"][0]["captions"]}) == 3, body
        sampled = [post(client, photo, sample="true", n=4, seed=seed, temperature=2)[1] for seed in (3, 3, 4)]
    texts = [[c["text"] for c in body["results"][0]["captions"]] for body in sampled]
    assert texts[0] == texts[1] != texts[2] and len(texts[0]) == 4 and len(set(texts[0])) > 1
    logp = [c["log_prob"] for c in sampled[0]["results"][0]["captions"]]
    assert logp == sorted(logp, reverse=True)


def test_the_apps_beam_requests_are_length_normalised_by_default(model_dir: Path, tmp_path: Path) -> None:
    """The page asks for beam 3: without the recipe's length penalty raw log-probability favours two-word captions."""
    wordy = load(model_dir)
    with torch.no_grad():
        wordy.decoder.out.bias[END] = -1e4  # never ends: 5-word captions
    with TestClient(create_app(wordy.save(tmp_path / "wordy"), replace(DEFAULT, max_len=5))) as client:
        status, body = post(client, ("photo.jpg", image_bytes()), beam=3)
    assert status == 200, body
    captions = body["results"][0]["captions"]
    assert len(captions) == 3 and all(c["score"] > c["log_prob"] for c in captions)  # divided by (5 + 5) / 6


def test_health_model_page_and_schema(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert info == {"name": "tiny-model", "decoder": "show-tell", "grid": 7, "backbone": "resnet18", "image_size": 64,
                    "vocab_size": info["vocab_size"], "language": "English (en), Treebank words", "beam": 1,
                    "metrics": {"BLEU-4": 0.25, "CIDEr": 0.8},
                    "warning": None}  # a model not trained on the synthetic shapes
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert all(f'id="{i}"' in page.text for i in ("file", "preview", "captions", "latency", "error"))
    assert "http://" not in page.text and "https://" not in page.text  # works offline: nothing fetched elsewhere
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/v1/captions"]["post"]
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert set(schema["components"]["schemas"][ref]["properties"]) == {"results", "model", "latency_ms"}
    assert {"413", "415", "422", "503", "504"} <= set(op["responses"])
    assert {"block_ngram", "bad_endings", "sample", "temperature", "top_k", "top_p", "n", "seed", "groups",
            "diversity"} <= {
        p["name"] for p in op["parameters"]}
    caption = schema["components"]["schemas"]["Caption"]["properties"]
    assert "ordered by" in caption["score"]["description"] and "log-probability" in caption["log_prob"]["description"]


def test_model_without_metrics(model_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("model.safetensors", "config.json", "vocab.json"):
        (bare / f).write_bytes((model_dir / f).read_bytes())
    with TestClient(create_app(bare, Search(beam=2))) as c:
        info = c.get("/v1/model").json()
    assert info["metrics"] is None and info["beam"] == 2


@pytest.mark.parametrize(("files", "params", "status", "words"), [
    ([("notes.jpg", b"hello, I am text")], {}, 415, "JPEG, PNG, WebP"),
    ([("pic.ppm", image_bytes("PPM"))], {}, 415, "not accepted"),
    ([("big.jpg", b"\xff" * (MAX_BYTES + 1))], {}, 413, "larger than"),
    ([("huge.png", blank_png((1200, 1000)))], {}, 413, "too many pixels"),
    ([("bomb.png", png_header(20_000, 20_000))], {}, 413, "too many pixels"),
    ([("p.png", blank_png((900, 900)))] * 3, {}, 413, "over the budget of 2,000,000"),
    ([("thin.png", blank_png((2, 2000)))], {}, 422, "2 x 2000 pixels, more than 20:1"),
    ([("cut.jpg", image_bytes()[:2000])], {}, 422, "truncated"),
    ([("empty.jpg", b"")], {}, 422, "empty"),
    ([("a.jpg", image_bytes())] * 5, {}, 413, "at most 4"),
    ([("a.jpg", image_bytes())], {"beam": 11}, 422, "beam"),
    ([("a.jpg", image_bytes())], {"block_ngram": -1}, 422, "block_ngram"),
    ([("a.jpg", image_bytes())], {"sample": "true", "top_p": 1.5}, 422, "top_p"),
    ([("a.jpg", image_bytes())], {"temperature": 0.5}, 422, "add --sample (sample=true)"),
    ([("a.jpg", image_bytes())], {"sample": "true", "beam": 3}, 422, "leave --beam"),
    ([("a.jpg", image_bytes())], {"groups": 2, "beam": 3}, 422, "must divide --beam (beam) 3"),
])
def test_bad_input(client: TestClient, files: list, params: dict, status: int, words: str) -> None:
    code, body = post(client, *files, **params)
    assert code == status and words in body["detail"], body
    assert post(client, ("ok.jpg", image_bytes()))[0] == 200  # still serving


def test_no_file_and_oversized_request(client: TestClient) -> None:
    r = client.post("/v1/captions", data={"beam": "1"})
    assert r.status_code == 422 and "files" in r.json()["detail"]
    r = client.post("/v1/captions", files={"files": ("x.jpg", b"\0" * (4 * MAX_BYTES + 2**16 + 1))})
    assert r.status_code == 413 and "request too large" in r.json()["detail"]  # by Content-Length

    def streamed() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.jpg"\r\n\r\n'
        yield from [b"\0" * 2**16] * 64
    r = client.post("/v1/captions", content=streamed(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "request too large" in r.json()["detail"]
    assert post(client, ("ok.jpg", image_bytes()))[0] == 200


def test_an_unreadable_exif_orientation_fails_no_request(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, bad = create_app(model_dir, max_wait_ms=1000), jpeg_with_exif(MALFORMED_EXIF)
    calls = _count_calls(app.state.model, monkeypatch)
    with TestClient(app) as c, ThreadPoolExecutor(2) as pool:
        apart = list(pool.map(lambda f: post(c, f), [("good.jpg", image_bytes()), ("bad-exif.jpg", bad)]))
        together = post(c, ("good.jpg", image_bytes()), ("bad-exif.jpg", bad))
    assert calls[0] == (2, 1), calls  # the two requests shared a batch
    assert [code for code, _ in apart] == [200, 200] and together[0] == 200, (apart, together)
    for result in [r for _, body in [*apart, together] for r in body["results"]]:
        assert result["error"] is None and len(result["captions"]) == 1, result


def test_uploads_are_decoded_and_upright_before_they_join_a_batch(client: TestClient,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model, seen = client.app.state.model, []
    caption = model.caption

    def record(images: list[Image.Image], search: Search = DEFAULT, **kw: int) -> list:
        seen.extend((im.size, im.mode) for im in images)
        return caption(images, search, **kw)

    monkeypatch.setattr(model, "caption", record)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    status, body = post(client, ("turned.jpg", jpeg_with_exif(exif.tobytes())),
                        ("alpha.png", image_bytes("PNG", "RGBA")), ("gray.jpg", image_bytes("JPEG", "L")))
    assert status == 200, body
    assert seen == [((16, 32), "RGB"), ((96, 72), "RGB"), ((96, 72), "L")]  # gray goes as gray: 1 byte a pixel


def test_decoded_size_is_admitted_against_a_global_budget(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="max_decoded_bytes"):
        create_app(model_dir, max_decoded_bytes=10**6, max_request_pixels=10**6)
    app = create_app(model_dir, max_decoded_bytes=3_000_000, max_request_pixels=300_000, queue_wait_s=0)
    _, entered, release = _hold_first_call(app.state.model, monkeypatch)
    with TestClient(app) as c, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, c, ("a.png", blank_png((500, 500), "RGB")))  # 500 x 500 RGB: 2 MB
        assert entered.wait(5)
        r = c.post("/v1/captions", files={"files": ("b.png", blank_png((500, 500), "RGB"))})
        release.set()
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "busy (2 of 3 MB of decoded images" in r.json()["detail"]
        assert first.result(5)[0] == 200
        assert post(c, ("c.png", blank_png((500, 500))))[0] == 200  # room again


@pytest.mark.parametrize("batching", [True, False])
def test_a_timed_out_request_drops_its_images_at_once(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                      batching: bool) -> None:
    app = create_app(model_dir, batching=batching, max_batch=1, request_timeout_s=0.5)
    _, entered, release = _hold_first_call(app.state.model, monkeypatch)
    decoded, decode = [], serve_app.decode

    def spy(image: Image.Image, name: str) -> Image.Image | None:
        decoded.append(weakref.ref(image))  # a noisy RGB JPEG: decoded in place, the same object goes on
        return decode(image, name)

    monkeypatch.setattr(serve_app, "decode", spy)
    with TestClient(app) as c, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, c, ("a.jpg", image_bytes()))
        assert entered.wait(5)
        late = post(c, ("b.jpg", image_bytes(seed=1)))
        gc.collect()
        alive = [ref() is not None for ref in decoded]
        release.set()
        assert late[0] == 504 and first.result(5)[0] == 504
    assert alive == [True, False]  # a.jpg is in the model's hands; b.jpg, which never reached it, is gone


def test_a_request_leaving_during_the_model_call_leaves_the_others_their_captions(
        model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(model_dir, max_wait_ms=500)
    calls, entered, release = _hold_first_call(app.state.model, monkeypatch)
    files = [("files", ("white.png", png(Image.new("RGB", (96, 72), "white")))), ("files", ("b.jpg", image_bytes()))]

    async def scenario(c: httpx.AsyncClient) -> tuple[list, list]:
        black = png(Image.new("RGB", (96, 72)))
        leaving = asyncio.create_task(c.post("/v1/captions", files={"files": ("black.png", black)}))
        await asyncio.sleep(0.1)
        staying = asyncio.create_task(c.post("/v1/captions", files=files))
        assert await asyncio.to_thread(entered.wait, 5)
        leaving.cancel()  # the client goes away while its image is being captioned with the others
        await asyncio.sleep(0.1)
        release.set()
        together = (await staying).json()["results"]
        return together, (await c.post("/v1/captions", files=files)).json()["results"]

    together, alone = run_async(app, scenario)
    assert calls == [3, 2]
    scores = [[c["score"] for r in results for c in r["captions"]] for results in (together, alone)]
    assert scores[0] == pytest.approx(scores[1], abs=1e-4)  # not the leaving image's captions, nor shifted


def _count_calls(model: Captioner, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record (images, beam) of each model call; each call is slowed so that requests pile up."""
    calls: list[tuple[int, int]] = []
    caption = model.caption

    def counted(images: list, search: Search = DEFAULT, **kw: int) -> list:
        calls.append((len(images), search.beam))
        time.sleep(0.1)
        return caption(images, search, **kw)

    monkeypatch.setattr(model, "caption", counted)
    return calls


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_requests_are_batched(model_dir: Path, monkeypatch: pytest.MonkeyPatch, batching: bool) -> None:
    app = create_app(model_dir, max_wait_ms=50, batching=batching)
    calls = _count_calls(app.state.model, monkeypatch)
    beams = [1, 1, 3, 1, 3, 1, 1, 3]
    with TestClient(app) as c, ThreadPoolExecutor(len(beams)) as pool:
        def one(i: int) -> dict:
            return c.post("/v1/captions", files={"files": (f"{i}.jpg", image_bytes(seed=i))},
                          params={"beam": beams[i]}).json()
        bodies = list(pool.map(one, range(len(beams))))
    assert [len(b["results"][0]["captions"]) for b in bodies] == beams
    assert sum(n for n, _ in calls) == len(beams)
    assert len(calls) < len(beams) if batching else len(calls) == len(beams), calls


def run_async(app: FastAPI, scenario: Callable[[httpx.AsyncClient], Awaitable[T]], seconds: float = 5) -> T:
    """Run ``scenario`` against ``app`` (lifespan included) in a fresh event loop; a hang fails after ``seconds``."""
    async def main() -> T:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await asyncio.wait_for(scenario(c), seconds)
    return asyncio.run(main())


async def two_requests(c: httpx.AsyncClient) -> list[int]:
    """Status codes of two requests, one after the other."""
    return [(await c.post("/v1/captions", files={"files": (f"{i}.jpg", image_bytes(seed=i))})).status_code
            for i in range(2)]


class _Py310Timeout(Exception):
    """``asyncio.TimeoutError`` as Python 3.10 has it: not the builtin ``TimeoutError``."""


def test_batcher_survives_py310_timeout(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_wait_for = asyncio.wait_for

    async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
        try:
            return await real_wait_for(aw, timeout)
        except asyncio.TimeoutError:
            raise _Py310Timeout from None

    py310 = SimpleNamespace(**{**vars(asyncio), "wait_for": wait_for, "TimeoutError": _Py310Timeout})
    for module in (serve_app, serve_batcher):  # the asyncio the serving modules see, as on Python 3.10
        monkeypatch.setattr(module, "asyncio", py310)
    assert run_async(create_app(model_dir), two_requests) == [200, 200]


def test_batcher_survives_unexpected_error(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    real_run, calls = serve_batcher.Batcher._run, []

    async def buggy(self: serve_batcher.Batcher, jobs: list, search: Search) -> None:
        calls.append(len(jobs))
        if len(calls) == 1:
            raise RuntimeError("a bug in the batcher")
        await real_run(self, jobs, search)

    monkeypatch.setattr(serve_batcher.Batcher, "_run", buggy)
    with caplog.at_level("ERROR", "captioner.serve"):
        assert run_async(create_app(model_dir), two_requests) == [500, 200]  # the bug fails its batch only
    assert "a bug in the batcher" in caplog.text


def test_large_jpeg_is_decoded_reduced(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    model, sizes = client.app.state.model, []
    caption = model.caption

    def record(images: list[Image.Image], search: Search = DEFAULT, **kw: int) -> list:
        sizes.extend(im.size for im in images)
        return caption(images, search, **kw)

    monkeypatch.setattr(model, "caption", record)
    big = BytesIO()
    Image.new("RGB", (1024, 768), "olive").save(big, "JPEG")
    status, body = post(client, ("big.jpg", big.getvalue()), ("small.jpg", image_bytes()),
                        ("big.png", blank_png((1024, 768))))
    assert status == 200, body
    # the model's side is 64: a JPEG decodes at 1/4 scale, its short side still >= 2 x 64; small or PNG: untouched
    assert sizes == [(256, 192), (96, 72), (1024, 768)]


def _hold_first_call(model: Captioner, monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], threading.Event,
                                                                                 threading.Event]:
    """Record the images of each model call; the first call sets ``entered`` and waits for ``release``."""
    calls, entered, release = [], threading.Event(), threading.Event()
    caption = model.caption

    def held(images: list, search: Search = DEFAULT, **kw: int) -> list:
        calls.append(len(images))
        if len(calls) == 1:
            entered.set()
            release.wait(10)
        return caption(images, search, **kw)

    monkeypatch.setattr(model, "caption", held)
    return calls, entered, release


@pytest.mark.parametrize("batching", [True, False])
def test_full_queue_answers_503(model_dir: Path, monkeypatch: pytest.MonkeyPatch, batching: bool) -> None:
    with pytest.raises(ValueError, match="max_queue"):
        create_app(model_dir, max_queue=2, max_files=3)
    app = create_app(model_dir, batching=batching, max_queue=2, max_files=2, queue_wait_s=0)
    _, entered, release = _hold_first_call(app.state.model, monkeypatch)
    with TestClient(app) as c, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, c, ("a.jpg", image_bytes()), ("b.jpg", image_bytes(seed=1)))  # fills the queue
        assert entered.wait(5)
        r = c.post("/v1/captions", files={"files": ("c.jpg", image_bytes())})
        release.set()
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "busy" in r.json()["detail"]
        assert first.result(5)[0] == 200
        assert post(c, ("d.jpg", image_bytes()))[0] == 200  # room again


@pytest.mark.parametrize("batching", [True, False])
def test_slow_request_answers_504(model_dir: Path, monkeypatch: pytest.MonkeyPatch, batching: bool) -> None:
    app = create_app(model_dir, batching=batching, max_batch=1, request_timeout_s=1)
    calls, _, release = _hold_first_call(app.state.model, monkeypatch)
    with TestClient(app) as c, ThreadPoolExecutor(2) as pool:
        late = list(pool.map(lambda i: post(c, (f"{i}.jpg", image_bytes(seed=i))), range(2)))
        release.set()
        assert [code for code, _ in late] == [504, 504] and "within 1 s" in late[0][1]["detail"], late
        assert post(c, ("ok.jpg", image_bytes()))[0] == 200
    assert calls == [1, 1]  # the request that timed out while queued never reached the model


def rss_mb() -> float:
    """This process's resident memory in MB (Linux /proc)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory from Linux /proc")
def test_overload_is_shed_with_bounded_memory(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(model_dir, max_queue=16, max_pixels=4_000_000, request_timeout_s=10, queue_wait_s=0)
    caption = app.state.model.caption

    def slow(images: list, search: Search = DEFAULT, **kw: int) -> list:
        time.sleep(0.2)
        return caption(images, search, **kw)

    monkeypatch.setattr(app.state.model, "caption", slow)
    clients, data = 64, blank_png((2000, 1500))  # a few kB that decode to 3 MB
    start, codes, latencies, rss = threading.Barrier(clients + 1), [], [], []
    limits = httpx.Limits(max_connections=clients)
    with running(app) as url, httpx.Client(base_url=url, timeout=15, limits=limits) as http:
        http.post("/v1/captions", files={"files": ("warm.png", data)}).raise_for_status()
        base, done = rss_mb(), threading.Event()

        def client() -> None:
            start.wait()
            t = time.perf_counter()
            codes.append(http.post("/v1/captions", files={"files": ("x.png", data)}).status_code)
            latencies.append(time.perf_counter() - t)

        def watch() -> None:
            while not done.wait(0.005):
                rss.append(rss_mb())

        threads = [threading.Thread(target=client) for _ in range(clients)]
        watcher = threading.Thread(target=watch)
        for t in [*threads, watcher]:
            t.start()
        start.wait()
        for t in threads:
            t.join(20)
        done.set()
        watcher.join()
    growth = max(rss) - base
    print(f"codes {dict(sorted(Counter(codes).items()))}, max latency {max(latencies):.2f} s, RSS +{growth:.0f} MB")
    assert len(codes) == clients and set(codes) == {200, 503}, sorted(codes)
    assert max(latencies) < 10  # nothing waited for the timeout, let alone hung
    # 16 held images x 3 MB decoded + one 9 MB RGB copy in preprocessing + allocator slack; all 64 held: > 190 MB
    assert growth < 100, growth
