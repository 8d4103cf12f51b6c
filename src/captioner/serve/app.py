"""HTTP captioning service: a FastAPI app with micro-batching, upload and load limits and a one-page web UI."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, replace
from functools import partial
from importlib import resources
from io import BytesIO
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from captioner import load, recipe
from captioner.data.rgb import to_rgb, upright
from captioner.io import read_json
from captioner.models.families import DECODERS
from captioner.search_options import SearchOptions

log = logging.getLogger("captioner.serve")

FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})  # Pillow's names; MPO is a camera JPEG
ACCEPTED = "JPEG, PNG, WebP, BMP, GIF, TIFF"
CHUNK = 2**16
FORM_OVERHEAD = 2**16  # multipart boundaries, headers and the beam field
RETRY_AFTER_S = 1  # what a 503 (server busy) tells the client to wait
PIXEL_BYTES = 8  # what a pixel costs while decoded: Pillow's pixel (up to 4 bytes, RGB too) and its RGB copy
# Pillow allocates an image in blocks of this size (its default: 16 MB): past glibc's largest mmap threshold (32 MB)
# each goes back to the OS when freed, not into the arena of the thread that decoded it (one 6000 x 6000 PNG at a time
# from 32 clients: the server's RSS +840 MB -> +160 MB)
IMAGE_BLOCK_BYTES = 64 * 2**20
Captions = list[list[Any]]  # per image, best first: objects with .text, .words, .score, .log_prob, .attention (or None)
Beam = tuple[int, SearchOptions]  # a request's beam width and search options: requests with the same share batches


class Caption(BaseModel):
    text: str = Field(description="UTF-8; words joined as the model's language writes them (Chinese: no spaces)")
    words: list[str] = Field(description="the caption's words, one per attention map")
    score: float = Field(description="what the alternatives are ordered by, best first (higher is better): with a "
                                     "length penalty alpha > 0 in beam search the log-probability divided by "
                                     "((5 + words) / 6) ** alpha (GNMT), otherwise the log-probability")
    log_prob: float = Field(description="log-probability of the caption's words (and of <end> when produced)")
    attention: list[list[list[float]]] | None = Field(
        None, description="with ?attention=true on an attention model: per word (then <end>, when produced) the "
                          "G x G attention weights over the centre crop, rows top to bottom; each map sums to 1")


class Result(BaseModel):
    filename: str
    captions: list[Caption] = Field(description="best first (none for a file that was skipped)")
    error: str | None = Field(None, description="why this file was skipped; the request's other files are captioned "
                                                "(a request whose files are all bad is answered with that error)")


class CaptionResponse(BaseModel):
    results: list[Result]
    model: str
    latency_ms: float = Field(description="time in the server after the upload: decoding, queueing, captioning")


class ModelInfo(BaseModel):
    name: str
    decoder: str = Field(description=f"decoder family: {', '.join(DECODERS)}")
    grid: int = Field(description="side G of the feature grid (attention maps are G x G)")
    backbone: str
    image_size: int
    vocab_size: int
    language: str = Field(description="the captions' language and tokenizer (vocab.json), e.g. 'Chinese (zh), jieba "
                                      "words'")
    beam: int
    metrics: dict[str, float] | None = Field(description="the model folder's metrics_test.json (else metrics_val.json)")
    warning: str | None = Field(None, description="set when the model cannot caption photos (synthetic shapes only)")


class SearchQuery(BaseModel):
    """Search controls a request may set, each unset one the server's (``captioner serve`` flags; all off there by
    default); checked together with the beam width, 422 naming the option."""

    block_ngram: int | None = Field(None, ge=0, le=10, description="rule out a word that would complete an n-gram "
                                    "already in the caption (e.g. 3; 0: off)")
    bad_endings: bool | None = Field(None, description="rule out <end> after a function word (a, the, of, with, ...)")
    sample: bool | None = Field(None, description="draw captions from the model instead of searching (beam 1)")
    temperature: float | None = Field(None, gt=0, le=100, description="sampling temperature (below 1 sharper)")
    top_k: int | None = Field(None, ge=0, description="sample among the k likeliest words (0: all)")
    top_p: float | None = Field(None, gt=0, le=1, description="sample among the likeliest words that hold this "
                                "probability (nucleus)")
    n: int | None = Field(None, ge=1, le=10, description="captions sampled per image, the likeliest first")
    seed: int | None = Field(None, ge=0, description="sampling seed: the same seed, the same captions of an image")
    groups: int | None = Field(None, ge=1, le=10, description="diverse beam search: the beams in this many groups, "
                               "each kept from the words earlier groups chose (must divide beam)")
    diversity: float | None = Field(None, ge=0, le=100, description="diverse beam search: a group's penalty per "
                                    "earlier group's beam with the same word at that step")


class Health(BaseModel):
    status: str


class Error(BaseModel):
    detail: str


@dataclass
class _Job:
    images: list[Image.Image]
    beam: Beam
    future: asyncio.Future[Captions]


def _fail(jobs: list[_Job], error: Exception) -> None:
    """Pass ``error`` to each request still waiting on ``jobs``."""
    for j in jobs:
        if not j.future.done():
            j.future.set_exception(error)


class Batcher:
    """Gathers concurrent requests into one model call: flush at ``max_batch`` images or after ``max_wait_ms``."""

    def __init__(self, run: Callable[[list[Image.Image], Beam], Awaitable[Captions]], max_batch: int,
                 max_wait_ms: float) -> None:
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()

    async def submit(self, images: list[Image.Image], beam: Beam) -> Captions:
        """Queue images and wait for their captions; a request that times out or leaves drops its images at once
        (its job, skipped, waits in the queue without them)."""
        job = _Job(images, beam, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        try:
            return await job.future
        finally:
            images.clear()

    async def loop(self) -> None:
        """Forever: take the first waiting job, gather more until full or timed out, run each beam size once.

        An unexpected error fails the requests at hand and is logged; the loop goes on serving."""
        while True:
            jobs = [await self.queue.get()]
            try:
                await self._gather(jobs)
                for beam in dict.fromkeys(j.beam for j in jobs):
                    await self._run([j for j in jobs if j.beam == beam], beam)
            except Exception as e:
                log.exception("the batcher failed on %d requests; serving on", len(jobs))
                _fail(jobs, e)

    async def _gather(self, jobs: list[_Job]) -> None:
        """Add waiting jobs to ``jobs`` until they hold ``max_batch`` images or ``max_wait`` has passed."""
        clock = asyncio.get_running_loop().time
        deadline = clock() + self.max_wait
        while sum(len(j.images) for j in jobs) < self.max_batch and (left := deadline - clock()) > 0:
            try:
                jobs.append(await asyncio.wait_for(self.queue.get(), left))
            except (TimeoutError, asyncio.TimeoutError):  # two classes on Python 3.10, one since 3.11
                break

    async def _run(self, jobs: list[_Job], beam: Beam) -> None:
        jobs = [j for j in jobs if not j.future.done()]  # a request that timed out or left costs no model time
        if not jobs:
            return
        counts = [len(j.images) for j in jobs]  # a job that leaves during the call clears its list
        try:
            out = await self.run([im for j in jobs for im in j.images], beam)
        except Exception as e:  # the model failed: every waiting request gets the error
            _fail(jobs, e)
            return
        for j, n in zip(jobs, counts, strict=True):
            if not j.future.done():  # a cancelled request (client gone) leaves a done future
                j.future.set_result(out[:n])
            out = out[n:]


class Admission:
    """Counts what the server holds (images, or bytes of decoded pixels: decoding, queued or being captioned);
    refuses more than ``limit``. ``unit`` and ``scale`` word its 503: held / scale of limit / scale unit."""

    def __init__(self, limit: int, unit: str = "images", scale: int = 1) -> None:
        self.limit, self.unit, self.scale, self.held = limit, unit, scale, 0

    @contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        """Hold room for ``amount`` during the block; 503 with Retry-After when there is none."""
        if self.held + amount > self.limit:  # no await between check and update: one event loop, no race
            raise HTTPException(503, f"the server is busy ({self.held / self.scale:,.0f} of "
                                     f"{self.limit / self.scale:,.0f} {self.unit} in progress): "
                                     f"retry in {RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})
        self.held += amount
        try:
            yield
        finally:
            self.held -= amount


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, by Content-Length or while it streams."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        detail = f"request too large: the limit is {self.limit / 2**20:.1f} MB per request"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await JSONResponse({"detail": detail}, 413)(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, detail)
            return message

        await self.app(scope, limited, send)


async def read_limited(upload: UploadFile, max_bytes: int) -> bytes:
    """The upload's bytes, read in chunks; 413 as soon as it passes ``max_bytes``."""
    # Starlette has already spooled the part (to a temp file past 1 MB); we keep at most max_bytes in memory.
    data = bytearray()
    while chunk := await upload.read(CHUNK):
        data += chunk
        if len(data) > max_bytes:
            raise HTTPException(413, f"{upload.filename!r} is larger than {max_bytes / 2**20:.1f} MB: "
                                     "send a smaller image")
    return bytes(data)


def open_image(data: bytes, name: str, max_pixels: int, min_side: int, max_aspect: float) -> Image.Image:
    """Read an upload's header and check its format, pixel count and aspect ratio; a large JPEG is set to decode at
    1/2, 1/4 or 1/8 scale (Pillow's draft) with its short side still at least ``min_side``. Nothing is decoded yet."""
    if not data:
        raise HTTPException(422, f"{name!r} is empty: choose an image file")
    bomb = f"{name!r} has too many pixels (over {max_pixels:,}): send a smaller image"
    try:
        image = Image.open(BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:
        raise HTTPException(413, bomb) from e
    except Exception as e:  # Pillow raises many kinds on unknown bytes
        raise HTTPException(415, f"{name!r} is not an image we can read: send {ACCEPTED}") from e
    if image.format not in FORMATS:
        raise HTTPException(415, f"{name!r} is {image.format}, which is not accepted: send {ACCEPTED}")
    if image.width * image.height > max_pixels:
        raise HTTPException(413, bomb)
    if max(image.size) > max_aspect * min(image.size):
        raise HTTPException(422, f"{name!r} is {image.width} x {image.height} pixels, more than {max_aspect:g}:1: "
                                 "crop it to the part to caption")
    image.draft("RGB", (min_side, min_side))  # JPEG only; other formats ignore it
    return image


def decode(image: Image.Image, name: str) -> Image.Image:
    """Decode an image from ``open_image`` and turn it upright, before it joins a batch (a file failing here fails
    only itself); all but 8-bit gray (1 byte a pixel, for the model's to_rgb) is converted to RGB here too."""
    try:
        image.load()
        image = upright(image)
        return image if image.mode in ("L", "RGB") else to_rgb(image)
    except Image.DecompressionBombError as e:
        raise HTTPException(413, f"{name!r} has too many pixels: send a smaller image") from e
    except Exception as e:
        raise HTTPException(422, f"{name!r} is a damaged or truncated {image.format} file: {e}") from e


def _validation_detail(exc: RequestValidationError) -> str:
    """One readable line from FastAPI's validation errors."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(x) for x in err["loc"][1:]) or "request"
        hint = " (send one or more images in the multipart field 'files')" if field.startswith("files") else ""
        parts.append(f"{field}: {err['msg']}{hint}")
    return "; ".join(parts)


def create_app(model_dir: str | Path, beam: int = 1, max_batch: int = 16, max_wait_ms: float = 10.0,
               max_bytes: int = 10 * 2**20, max_pixels: int = 40_000_000, batching: bool = True,
               max_files: int = 16, max_queue: int = 64, request_timeout_s: float = 30.0,
               max_request_pixels: int = 50_000_000, max_len: int | None = None,
               length_penalty: float = recipe.SEARCH["length_penalty"], options: SearchOptions | None = None,
               runtime: str = "torch", max_decoded_bytes: int = 2**29, precision: str = "fp32",
               max_aspect: float = 20.0) -> FastAPI:
    """Load the model in ``model_dir`` and build the app; ``batching=False`` runs each request alone. Beam requests
    (the page asks for 3 alternatives) are length-normalised as `captioner serve`'s are (the recipe's penalty).

    The server holds at most ``max_queue`` images and ``max_decoded_bytes`` of decoded pixels (PIXEL_BYTES each)
    at once (more: 503), answers each request within ``request_timeout_s`` (or 504), decodes at most
    ``max_request_pixels`` per request (or 413) and refuses images thinner than ``max_aspect``:1 (422)."""
    if max_queue < max_files:
        raise ValueError(f"max_queue ({max_queue}) is below max_files ({max_files}): "
                         "a request with the most files would never be accepted")
    if max_decoded_bytes < max_request_pixels * PIXEL_BYTES:
        raise ValueError(f"max_decoded_bytes ({max_decoded_bytes:,}) is below max_request_pixels x {PIXEL_BYTES} "
                         f"({max_request_pixels * PIXEL_BYTES:,}): a request with the most pixels would never be "
                         "accepted")
    model_dir = Path(model_dir)
    model = load(str(model_dir), runtime=runtime, precision=precision)  # torch, or onnx (on onnxruntime)
    metrics_file = next((f for f in (model_dir / "metrics_test.json", model_dir / "metrics_val.json") if f.is_file()),
                        None)
    info = ModelInfo(name=model_dir.resolve().name, decoder=model.config.decoder, grid=model.config.grid,
                     backbone=model.config.backbone,
                     image_size=model.config.image_size, vocab_size=len(model.vocab),
                     language=model.vocab.tokenizer.describe(), beam=beam,
                     metrics=read_json(metrics_file, "metrics") if metrics_file else None,
                     warning=model.config.synthetic_warning())
    if info.warning:
        log.warning("%s: %s", model_dir, info.warning)
    page = resources.files("captioner.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    admission, memory = Admission(max_queue), Admission(max_decoded_bytes, "MB of decoded images", 2**20)
    min_side = 2 * model.config.image_size  # JPEG drafts keep twice what the model's resize needs

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        Image.core.set_block_size(IMAGE_BLOCK_BYTES)
        executor = ThreadPoolExecutor(1, thread_name_prefix="captioner-model")  # one model call at a time

        async def run(images: list[Image.Image], beam: Beam) -> Captions:
            call = partial(model.caption, images, beam[0], max_len=max_len, length_penalty=length_penalty,
                           options=beam[1])
            return await asyncio.get_running_loop().run_in_executor(executor, call)

        batcher = Batcher(run, max_batch, max_wait_ms) if batching else Batcher(run, 1, 0)  # 1: each request alone
        app.state.caption, task = batcher.submit, asyncio.create_task(batcher.loop())
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            executor.shutdown(wait=True)

    app = FastAPI(title="captioner", summary="Caption images with a CNN -> LSTM model.", lifespan=lifespan)
    app.state.model = model
    app.add_middleware(BodyLimit, limit=max_bytes * max_files + FORM_OVERHEAD)

    @app.middleware("http")
    async def log_request(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        start, status = time.perf_counter(), 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            log.info("%s %s %d %.1f ms", request.method, request.url.path, status,
                     (time.perf_counter() - start) * 1000)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_detail(exc)}, 422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/healthz")
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/v1/model")
    async def model_info() -> ModelInfo:
        return info

    errors: dict[int | str, dict[str, Any]] = {
        413: {"model": Error, "description": "upload too large (bytes, pixels, pixels per request or number of files)"},
        415: {"model": Error, "description": f"not an image ({ACCEPTED} are accepted)"},
        422: {"model": Error, "description": "missing, empty or corrupt upload, or invalid parameter"},
        503: {"model": Error, "description": f"server busy: its queue or its memory for decoded images is full; "
                                             f"retry after {RETRY_AFTER_S} s (the Retry-After header)"},
        504: {"model": Error, "description": f"no answer within {request_timeout_s:g} s"},
    }

    async def caption(files: list[UploadFile], names: list[str], beam: Beam) -> list[list[Any] | HTTPException]:
        """Read and check the uploads, decode them within the request's and the server's pixel budgets, caption
        them: per file its captions, or the error that skipped it (when every file fails, the first file's error is
        raised)."""
        images: dict[int, Image.Image] = {}
        skipped: dict[int, HTTPException] = {}
        for i, (upload, name) in enumerate(zip(files, names, strict=True)):
            try:
                data = await read_limited(upload, max_bytes)
                images[i] = await asyncio.to_thread(open_image, data, name, max_pixels, min_side, max_aspect)
            except HTTPException as e:
                skipped[i] = e
        pixels = sum(im.width * im.height for im in images.values())
        if pixels > max_request_pixels:
            raise HTTPException(413, f"{pixels:,} pixels to decode in one request, over the budget of "
                                     f"{max_request_pixels:,}: send fewer or smaller images")
        with memory.hold(pixels * PIXEL_BYTES):
            for i in list(images):
                try:
                    images[i] = await asyncio.to_thread(decode, images[i], names[i])
                except HTTPException as e:
                    skipped[i] = e
                    del images[i]
            for i, e in sorted(skipped.items()):
                log.warning("skipped %s: %s", names[i], e.detail)
            if not images:
                raise skipped[0]
            captioned = iter(await app.state.caption(list(images.values()), beam))
        return [skipped[i] if i in skipped else next(captioned) for i in range(len(files))]

    @app.post("/v1/captions", responses=errors)
    async def captions(
        files: Annotated[list[UploadFile], File(description=f"one or more images ({ACCEPTED})")],
        beam_query: Annotated[int | None, Query(alias="beam", ge=1, le=10, description="beam width")] = None,
        beam_form: Annotated[int | None, Form(alias="beam", ge=1, le=10, description="beam width")] = None,
        attention: Annotated[bool, Query(description="include each word's attention map (attention models)")]
        = False,
        search: Annotated[SearchQuery, Query()] = None,
    ) -> CaptionResponse:
        """Caption the uploaded images; with beam > 1 each gets ``beam`` alternatives, best first. A file that cannot
        be read is skipped with its error in its result, unless all are bad (then: that error's status)."""
        start = time.perf_counter()
        asked = (beam_query or beam_form or beam, replace(options or SearchOptions(), **(
            search.model_dump(exclude_none=True) if search else {})))
        try:
            asked[1].check(asked[0])
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        if len(files) > max_files:
            raise HTTPException(413, f"{len(files)} files sent: at most {max_files} per request")
        names = [f.filename or f"file{i}" for i, f in enumerate(files)]
        with admission.hold(len(files)):
            try:
                out = await asyncio.wait_for(caption(files, names, asked),
                                             request_timeout_s)
            except (TimeoutError, asyncio.TimeoutError):  # two classes on Python 3.10, one since 3.11
                raise HTTPException(504, f"no answer within {request_timeout_s:g} s: the server is busy, "
                                         "try again later") from None
        results = [Result(filename=name, captions=[], error=caps.detail) if isinstance(caps, HTTPException) else
                   Result(filename=name, captions=[
                       Caption(text=c.text, words=list(c.words), score=c.score, log_prob=c.log_prob,
                               attention=c.attention.tolist() if attention and c.attention is not None else None)
                       for c in caps])
                   for name, caps in zip(names, out, strict=True)]
        return CaptionResponse(results=results, model=info.name,
                               latency_ms=round((time.perf_counter() - start) * 1000, 2))

    return app


@contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread (port 0: a free one); yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, **kw: Any) -> None:
    """Serve the model over HTTP with uvicorn (loopback only unless ``host`` says otherwise)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(model_dir, **kw), host=host, port=port, access_log=False)
