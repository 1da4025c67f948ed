"""The phone web page: one HTML page and one JSON endpoint (FastAPI), around a Screener loaded once.

The page posts the photo's bytes as the request body. The server reads at most `max_bytes` of it into memory (never
to disk, and no name or path from the client is used), checks the declared type and the bytes themselves, and answers
P(malignant), the risk band, the Grad-CAM overlay and the disclaimer, or a JSON error the page shows.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import html
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from importlib.resources import files

import cv2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from lesion.data.readers import BadImageError
from lesion.serving.inference import DISCLAIMER, Screener


class UploadError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def read_limited(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `max_bytes` (and up front when Content-Length does)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise UploadError(413, f"The photo is {int(declared) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise UploadError(413, f"The photo is over the limit of {max_bytes / 1e6:.0f} MB.")
        chunks.append(chunk)
    return b"".join(chunks)


def png_data_url(rgb) -> str:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode() if ok else ""


def heap_trimmer() -> Callable[[], None]:
    """glibc's malloc_trim(0): hand the heap's free pages back to the system (a no-op where there is no glibc)."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


def create_app(screener: Screener, max_bytes: int = 10_000_000, model_name: str = "", max_queue: int = 8) -> FastAPI:
    """The app around a loaded screener. Every photo is decoded, checked, explained and encoded on one worker thread,
    one at a time (Grad-CAM hooks are per model, and both cores already serve one forward pass): memory then holds
    one photo's arrays, not one per waiting request, and one allocator arena instead of one per pool thread, whose
    freed pages glibc keeps (the page held 5.5 GB after twenty photos when each request decoded in its own pool
    thread). After each photo the heap is trimmed. At most `max_queue` photos wait, as bytes, behind the one being
    checked; more get 503 with Retry-After and a message the page shows."""
    if max_queue < 0:
        raise ValueError(f"max_queue={max_queue}: give the number of photos that may wait (0 or more)")
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lesion-screen")

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        worker.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="lesion photo check", docs_url=None, redoc_url=None, lifespan=lifespan)
    trim = heap_trimmer()
    load = {"admitted": 0, "seconds": 1.0}  # photos waiting or being checked; a running mean of one check's time
    page = (
        files("lesion.serving")
        .joinpath("static/index.html")
        .read_text()
        .replace("__DISCLAIMER__", html.escape(DISCLAIMER))
        .replace("__MAX_BYTES__", str(int(max_bytes)))
        .replace("__MODEL__", html.escape(model_name or "unnamed"))
    )

    def screen(data: bytes) -> dict:
        start = time.perf_counter()
        try:
            image = screener.read(data, "upload")
            result = screener([image], ["upload"])[0]
            row = result.row()
            row["overlay"] = png_data_url(result.overlay) if result.overlay is not None else None
            row["image_size"] = [int(image.shape[1]), int(image.shape[0])]  # width, height of the photo received
            row["disclaimer"] = DISCLAIMER
            return {k: v for k, v in row.items() if k not in ("file", "error", "note")}
        finally:
            load["seconds"] = 0.8 * load["seconds"] + 0.2 * (time.perf_counter() - start)
            image = result = None  # noqa: F841  (the photo's arrays go before the trim)
            trim()

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.post("/api/screen")
    async def screen_upload(request: Request) -> JSONResponse:
        # One event loop: this check and the count change without a lock.
        if load["admitted"] > max_queue:  # one being checked and max_queue waiting
            wait = max(1, math.ceil(load["seconds"] * load["admitted"]))
            message = f"Many photos are being checked right now. Please try again in about {wait} seconds."
            return JSONResponse(
                {"error": message, "disclaimer": DISCLAIMER}, status_code=503, headers={"Retry-After": str(wait)}
            )
        load["admitted"] += 1
        try:
            return await _screen_upload(request)
        finally:
            load["admitted"] -= 1

    async def _screen_upload(request: Request) -> JSONResponse:
        try:
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if not (kind.startswith("image/") or kind == "application/octet-stream"):  # HEIC has no MIME type on
                # desktop browsers: the bytes decide (image_kind)
                raise UploadError(
                    415, f"This is not a photo (the file's type is {kind or 'unknown'}); choose an image."
                )
            data = await read_limited(request, max_bytes)
            if not data:
                raise UploadError(400, "The file is empty; choose a photo.")
            return JSONResponse(await asyncio.get_running_loop().run_in_executor(worker, screen, data))
        except UploadError as err:
            return JSONResponse({"error": err.message, "disclaimer": DISCLAIMER}, status_code=err.status)
        except BadImageError as err:
            return JSONResponse(
                {"error": f"This file could not be read as a photo ({err.reason}).", "disclaimer": DISCLAIMER},
                status_code=400,
            )

    @app.get("/healthz")
    def health() -> dict:
        return {"ok": True, "threshold": screener.threshold}

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app: FastAPI, port: int | None = None, timeout: float = 30.0) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 in a background thread (tests, screenshots); yields its base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + timeout
    while not server.started and time.time() < deadline and thread.is_alive():
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError(f"the app did not start on 127.0.0.1:{port} within {timeout} s")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
