"""HTTP captioning service: the FastAPI app (routes, middleware, lifespan) and running it with uvicorn.

A request's path: the body limit, then admission by image count, read and check each upload (limits), admission by
decoded bytes, decode, then the batcher's model call (batcher); answers are schemas."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, replace
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from PIL import Image

from captioner import load, recipe
from captioner.io import read_json
from captioner.search import Search
from captioner.serve.admission import RETRY_AFTER_S, Admission
from captioner.serve.batcher import Batcher, Captions
from captioner.serve.hosts import HostCheck, default_hosts
from captioner.serve.limits import (
    ACCEPTED,
    FORM_OVERHEAD,
    IMAGE_BLOCK_BYTES,
    PIXEL_BYTES,
    BodyLimit,
    decode,
    decoded_bytes,
    open_image,
    read_limited,
)
from captioner.serve.schemas import Caption, CaptionResponse, Error, Health, ModelInfo, Result, SearchQuery

log = logging.getLogger("captioner.serve")
# an app's search unless told: greedy, and beam requests (the page asks for 3 alternatives) length-normalised as
# `captioner serve`'s are (the recipe's penalty)
DEFAULT = Search(length_penalty=recipe.SEARCH.length_penalty)


@dataclass
class Service:
    """What the routes share: the model and its description, the server's search (what a request leaves unset) and
    limits, and the two admissions (images held, decoded bytes held). ``caption`` is the batcher's, set while the app
    runs."""

    model: Any
    info: ModelInfo
    page: str
    search: Search
    batching: tuple[int, float]  # max images per model call, ms a batch waits to fill (1, 0: each request alone)
    max_bytes: int
    max_pixels: int
    max_files: int
    max_request_pixels: int
    max_aspect: float
    request_timeout_s: float
    admission: Admission
    memory: Admission
    caption: Callable[[list[Image.Image], Search], Awaitable[Captions]] | None = None

    @property
    def min_side(self) -> int:
        return 2 * self.model.config.image_size  # JPEG drafts keep twice what the model's resize needs


def create_app(model_dir: str | Path, search: Search = DEFAULT, max_batch: int = 16, max_wait_ms: float = 10.0,
               max_bytes: int = 10 * 2**20, max_pixels: int = 40_000_000, batching: bool = True,
               max_files: int = 16, max_queue: int = 64, request_timeout_s: float = 30.0,
               max_request_pixels: int = 50_000_000, runtime: str = "torch", max_decoded_bytes: int = 2**29,
               precision: str = "fp32", max_aspect: float = 20.0, queue_wait_s: float = 10.0,
               allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """Load the model in ``model_dir`` and build the app; ``batching=False`` runs each request alone. A request's
    search is ``search`` with the settings it sends (request_search).

    The server holds at most ``max_queue`` images and ``max_decoded_bytes`` of decoded pixels (what decoding each
    image's mode allocates: limits.decoded_bytes) at once; a request waits its turn for room in arrival order (503
    when it has not reached the head of the line within ``queue_wait_s``). It answers each admitted request within
    ``request_timeout_s`` (or 504), decodes at most ``max_request_pixels`` per request (or 413) and refuses images
    thinner than ``max_aspect``:1.
    With ``allowed_hosts`` it answers only requests whose Host header names one of them (else 400; None: any host,
    for an app embedded or tested; `serve` names the bind address and loopback). /docs needs no network."""
    if max_queue < max_files:
        raise ValueError(f"max_queue ({max_queue}) is below max_files ({max_files}): "
                         "a request with the most files would never be accepted")
    if max_decoded_bytes < max_request_pixels * PIXEL_BYTES:
        raise ValueError(f"max_decoded_bytes ({max_decoded_bytes:,}) is below max_request_pixels x {PIXEL_BYTES} "
                         f"({max_request_pixels * PIXEL_BYTES:,}): a request with the most pixels would never be "
                         "accepted")
    model_dir = Path(model_dir)
    model = load(str(model_dir), runtime=runtime, precision=precision)  # torch, or onnx (on onnxruntime)
    info = describe_model(model_dir, model, search.beam)
    if info.warning:
        log.warning("%s: %s", model_dir, info.warning)
    service = Service(
        model=model, info=info, search=search,
        page=resources.files("captioner.serve").joinpath("static/index.html").read_text(encoding="utf-8"),
        batching=(max_batch, max_wait_ms) if batching else (1, 0), max_bytes=max_bytes, max_pixels=max_pixels,
        max_files=max_files, max_request_pixels=max_request_pixels, max_aspect=max_aspect,
        request_timeout_s=request_timeout_s, admission=Admission(max_queue, max_wait_s=queue_wait_s),
        memory=Admission(max_decoded_bytes, "MB of decoded images", 2**20, max_wait_s=queue_wait_s))
    # FastAPIOffline: FastAPI whose /docs loads Swagger UI from files the package ships, not from a CDN
    app = FastAPIOffline(title="captioner", summary="Caption images with a CNN -> LSTM model.", lifespan=lifespan)
    app.state.model, app.state.service = model, service
    app.add_middleware(BodyLimit, limit=max_bytes * max_files + FORM_OVERHEAD)
    if allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed=allowed_hosts)  # added after: runs before the body limit
    app.middleware("http")(log_request)
    app.add_exception_handler(RequestValidationError, invalid)
    app.include_router(router)
    return app


def describe_model(model_dir: Path, model: Any, beam: int) -> ModelInfo:
    """What /v1/model says of the model in ``model_dir`` (its test metrics, else its validation metrics)."""
    metrics_file = next((f for f in (model_dir / "metrics_test.json", model_dir / "metrics_val.json") if f.is_file()),
                        None)
    c = model.config
    return ModelInfo(name=model_dir.resolve().name, decoder=c.decoder, grid=c.grid, backbone=c.backbone,
                     image_size=c.image_size, vocab_size=len(model.vocab), language=model.vocab.tokenizer.describe(),
                     beam=beam, metrics=read_json(metrics_file, "metrics") if metrics_file else None,
                     warning=c.synthetic_warning())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """While the app runs: one model thread (one model call at a time) fed by the batcher."""
    service: Service = app.state.service
    Image.core.set_block_size(IMAGE_BLOCK_BYTES)
    executor = ThreadPoolExecutor(1, thread_name_prefix="captioner-model")

    async def run(images: list[Image.Image], search: Search) -> Captions:
        call = partial(service.model.caption, images, search)
        return await asyncio.get_running_loop().run_in_executor(executor, call)

    batcher = Batcher(run, *service.batching)
    service.caption, task = batcher.submit, asyncio.create_task(batcher.loop())
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        executor.shutdown(wait=True)


async def log_request(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
    """Log each request's method, path, status and time."""
    start, status = time.perf_counter(), 500
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        log.info("%s %s %d %.1f ms", request.method, request.url.path, status, (time.perf_counter() - start) * 1000)


async def invalid(request: Request, exc: Exception) -> JSONResponse:
    """422 with one readable line from FastAPI's validation errors."""
    parts = []
    for err in exc.errors() if isinstance(exc, RequestValidationError) else []:
        field = ".".join(str(x) for x in err["loc"][1:]) or "request"
        hint = " (send one or more images in the multipart field 'files')" if field.startswith("files") else ""
        parts.append(f"{field}: {err['msg']}{hint}")
    return JSONResponse({"detail": "; ".join(parts)}, 422)


router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {  # the error answers of /v1/captions, for its OpenAPI schema
    413: {"model": Error, "description": "upload too large (bytes, pixels, pixels per request or number of files)"},
    415: {"model": Error, "description": f"not an image ({ACCEPTED} are accepted)"},
    422: {"model": Error, "description": "missing, empty or corrupt upload, or invalid parameter"},
    503: {"model": Error, "description": f"server busy: its queue or its memory for decoded images is full; "
                                         f"retry after {RETRY_AFTER_S} s (the Retry-After header)"},
    504: {"model": Error, "description": "no answer within the server's timeout (`captioner serve --timeout`, "
                                         "30 s by default)"},
}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(request: Request) -> str:
    return request.app.state.service.page


@router.get("/healthz")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/v1/model")
async def model_info(request: Request) -> ModelInfo:
    return request.app.state.service.info


@router.post("/v1/captions", responses=ERRORS)
async def captions(
    request: Request,
    files: Annotated[list[UploadFile], File(description=f"one or more images ({ACCEPTED})")],
    beam_query: Annotated[int | None, Query(alias="beam", ge=1, le=10, description="beam width")] = None,
    beam_form: Annotated[int | None, Form(alias="beam", ge=1, le=10, description="beam width")] = None,
    attention: Annotated[bool, Query(description="include each word's attention map (attention models)")] = False,
    search: Annotated[SearchQuery, Query()] = None,
) -> CaptionResponse:
    """Caption the uploaded images; with beam > 1 each gets ``beam`` alternatives, best first. A file that cannot
    be read is skipped with its error in its result, unless all are bad (then: that error's status)."""
    start, s = time.perf_counter(), request.app.state.service
    try:
        asked = request_search(s.search, beam_query or beam_form, search)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    if len(files) > s.max_files:
        raise HTTPException(413, f"{len(files)} files sent: at most {s.max_files} per request")
    names = [f.filename or f"file{i}" for i, f in enumerate(files)]
    async with s.admission.hold(len(files)):
        try:
            out = await asyncio.wait_for(caption_files(s, files, names, asked), s.request_timeout_s)
        except (TimeoutError, asyncio.TimeoutError):  # two classes on Python 3.10, one since 3.11
            raise HTTPException(504, f"no answer within {s.request_timeout_s:g} s: the server is busy, "
                                     "try again later") from None
    results = [Result(filename=name, captions=[], error=caps.detail) if isinstance(caps, HTTPException) else
               Result(filename=name, captions=[
                   Caption(text=c.text, words=list(c.words), score=c.score, log_prob=c.log_prob,
                           attention=c.attention.tolist() if attention and c.attention is not None else None)
                   for c in caps])
               for name, caps in zip(names, out, strict=True)]
    return CaptionResponse(results=results, model=s.info.name,
                           latency_ms=round((time.perf_counter() - start) * 1000, 2))


def request_search(served: Search, beam: int | None, query: SearchQuery | None) -> Search:
    """The search a request asks for: the server's, with the beam width and settings the request sets."""
    return replace(served, **({"beam": beam} if beam else {}), **(query.model_dump(exclude_none=True) if query else {}))


async def caption_files(s: Service, files: list[UploadFile], names: list[str],
                        search: Search) -> list[list[Any] | HTTPException]:
    """Read and check the uploads, decode them within the request's and the server's pixel budgets, caption them:
    per file its captions, or the error that skipped it (when every file fails, the first file's error is raised)."""
    images: dict[int, Image.Image] = {}
    skipped: dict[int, HTTPException] = {}
    for i, (upload, name) in enumerate(zip(files, names, strict=True)):
        try:
            data = await read_limited(upload, s.max_bytes)
            images[i] = await asyncio.to_thread(open_image, data, name, s.max_pixels, s.min_side, s.max_aspect)
        except HTTPException as e:
            skipped[i] = e
    pixels = sum(im.width * im.height for im in images.values())
    if pixels > s.max_request_pixels:
        raise HTTPException(413, f"{pixels:,} pixels to decode in one request, over the budget of "
                                 f"{s.max_request_pixels:,}: send fewer or smaller images")
    need = sum(decoded_bytes(im) for im in images.values())
    if need > s.memory.limit:
        raise HTTPException(413, f"{need / 2**20:,.0f} MB to decode in one request (alpha and 16-bit images cost "
                                 f"more than RGB), over the server's {s.memory.limit / 2**20:,.0f} MB: send fewer "
                                 "or smaller images")
    async with s.memory.hold(need):
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
        captioned = iter(await s.caption(list(images.values()), search))
    return [skipped[i] if i in skipped else next(captioned) for i in range(len(files))]


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


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
          allowed_hosts: Sequence[str] | None = None, **kw: Any) -> None:
    """Serve the model over HTTP with uvicorn (loopback only unless ``host`` says otherwise), answering requests
    for ``allowed_hosts`` (default: the bind address and loopback's names)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(model_dir, allowed_hosts=allowed_hosts or default_hosts(host), **kw)
    uvicorn.run(app, host=host, port=port, access_log=False)
