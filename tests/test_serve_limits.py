"""What the server holds under load: decoded memory counted by image mode, the fair admission queue."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import HTTPException
from PIL import Image
from test_serve import _hold_first_call, image_bytes, model_dir, run_async  # noqa: F401 - model_dir: a fixture

from captioner.serve.admission import Admission
from captioner.serve.app import create_app

# Decode one image in a fresh interpreter as the server does (header check, decode, then the model's RGB copy) and
# print the peak of resident memory above what was there before, and what the server admits it for.
MEASURE = """
import json, sys
from io import BytesIO
from pathlib import Path
from PIL import Image
from captioner.data.rgb import to_rgb
from captioner.serve import limits

def memory(key):
    return int(Path("/proc/self/status").read_text().split(key + ":")[1].split()[0]) * 1024

Image.core.set_block_size(limits.IMAGE_BLOCK_BYTES)
data = Path(sys.argv[1]).read_bytes()
opened = limits.open_image(data, "x", 10**9, 64, 100)
admitted = limits.decoded_bytes(opened)
Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) from here
before = memory("VmRSS")
decoded = limits.decode(opened, "x")
del opened
model_copy = to_rgb(decoded)
print(json.dumps({"peak": memory("VmHWM") - before, "admitted": admitted}))
"""


def _save(image: Image.Image, path: Path, **kw: object) -> Path:
    image.save(path, **kw)
    return path


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads peak memory from Linux /proc")
@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16", "CMYK", "RGB"])
def test_decoding_holds_no_more_than_it_was_admitted_for(mode: str, tmp_path: Path) -> None:
    """2000 x 2000 pixels: RGBA took 76 MB to decode and convert where 8 bytes a pixel (31 MB) were admitted."""
    colour = Image.linear_gradient("L").resize((2000, 2000)).convert("RGBA")
    if mode == "P":  # a palette with a transparent colour: converted through RGBA like alpha images
        file = _save(colour.convert("RGB").convert("P"), tmp_path / "x.png", transparency=0)
    elif mode == "I;16":
        file = _save(colour.convert("L").convert("I;16"), tmp_path / "x.png")
    else:
        file = _save(colour.convert(mode), tmp_path / ("x.tif" if mode == "CMYK" else "x.png"))
    assert Image.open(file).mode == mode
    out = subprocess.run([sys.executable, "-c", MEASURE, str(file)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout)
    assert measured["peak"] <= measured["admitted"], measured
    assert measured["peak"] > 2000 * 2000 * 3  # it measured the decoding (an RGB copy at least)


def test_admission_is_first_come_first_served() -> None:
    """A request that needs the whole budget is not overtaken by smaller ones that would fit before it; one that
    leaves the line does not block it; one that does not reach the head in time gets 503, the head waits on."""
    async def scenario() -> list[str]:
        room, order = Admission(4, max_wait_s=2), []

        async def request(name: str, amount: int, seconds: float) -> None:
            async with room.hold(amount):
                order.append(name)
                await asyncio.sleep(seconds)

        first = asyncio.create_task(request("first", 3, 0.2))
        await asyncio.sleep(0.01)
        big = asyncio.create_task(request("big", 4, 0.1))  # waits for the first to finish
        await asyncio.sleep(0.01)
        leaving = asyncio.create_task(request("leaving", 1, 0))
        small = [asyncio.create_task(request(f"small{i}", 1, 0)) for i in range(3)]  # would fit now: they wait
        await asyncio.sleep(0.01)
        leaving.cancel()
        await asyncio.gather(first, big, *small)
        assert room.held == 0 and not room.line
        return order

    assert asyncio.run(scenario()) == ["first", "big", "small0", "small1", "small2"]

    async def too_long() -> tuple[list[str], HTTPException]:
        room, order = Admission(1, max_wait_s=0.05), []

        async def request(name: str) -> None:
            async with room.hold(1):
                order.append(name)
                await asyncio.sleep(0.2)

        first = asyncio.create_task(request("first"))
        await asyncio.sleep(0.01)
        head = asyncio.create_task(request("head"))  # next in line: waits past max_wait_s, not turned away
        await asyncio.sleep(0.01)
        with pytest.raises(HTTPException) as busy:
            await request("behind")
        await asyncio.gather(first, head)
        assert room.held == 0 and not room.line
        return order, busy.value

    order, busy = asyncio.run(too_long())
    assert order == ["first", "head"]
    assert busy.status_code == 503 and busy.headers == {"Retry-After": "1"} and "busy (1 of 1 images" in busy.detail


def test_a_large_request_queued_first_is_captioned_before_later_small_ones(model_dir: Path,  # noqa: F811
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(model_dir, max_queue=4, max_files=4, max_wait_ms=0)
    calls, entered, release = _hold_first_call(app.state.model, monkeypatch)

    async def scenario(c) -> list[int]:
        def files(n: int, seed: int) -> list:
            return [("files", (f"{seed}-{i}.jpg", image_bytes(seed=seed + i))) for i in range(n)]

        first = asyncio.create_task(c.post("/v1/captions", files=files(1, 0)))  # holds 1 of 4 in the model
        assert await asyncio.to_thread(entered.wait, 5)
        big = asyncio.create_task(c.post("/v1/captions", files=files(4, 10)))  # must wait for all 4
        await asyncio.sleep(0.2)
        small = [asyncio.create_task(c.post("/v1/captions", files=files(1, 20 + i))) for i in range(3)]
        await asyncio.sleep(0.2)  # the small ones would fit (1 + 1 of 4): they wait behind the big one
        release.set()
        return [r.status_code for r in await asyncio.gather(first, big, *small)]

    assert run_async(app, scenario, seconds=30) == [200] * 5
    assert calls[:2] == [1, 4], calls  # old: the big request was refused (503) while small ones came in
