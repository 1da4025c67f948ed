"""The web page and predict.py run in bounded memory: the page does not grow over hundreds of requests (a slope check,
which a planted leak fails), and predict.py streams a folder instead of holding it."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lesion.models.module import LesionClassifier
from lesion.serving.inference import Screener, shrunk

BACKBONE = {"model_name": "tf_efficientnet_lite0", "pretrained": False, "input_size": 64}


def rss_mb() -> float:
    return int(re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def photo(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 200, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def small_model() -> LesionClassifier:
    torch.manual_seed(0)
    return LesionClassifier(backbone=BACKBONE).eval()


def slope_mb_per_request(screener: Screener, requests: int = 300, warm: int = 40) -> float:
    """Serve `warm` + `requests` uploads to the page in-process; MB of RSS per request of the least-squares line through
    the last two thirds (after the allocator and caches have settled)."""
    from fastapi.testclient import TestClient

    from lesion.serving.webapp import create_app

    client, data, samples = TestClient(create_app(screener, max_queue=2)), photo(), []
    for i in range(warm + requests):
        answer = client.post("/api/screen", content=data, headers={"Content-Type": "image/jpeg"})
        assert answer.status_code == 200, answer.text
        if i >= warm:
            samples.append(rss_mb())
    tail = np.array(samples[len(samples) // 3 :])
    return float(np.polyfit(np.arange(len(tail)), tail, 1)[0])


class LeakingScreener(Screener):
    """A screener that keeps a copy of every photo it was sent: the kind of leak the slope check is for."""

    kept: list = []

    def __call__(self, images, names):
        self.kept.append([image.copy() for image in images])
        return super().__call__(images, names)


@pytest.mark.slow
def test_the_page_does_not_grow_over_hundreds_of_requests_and_a_planted_leak_is_caught():
    # Generous bound: 0.05 MB a request is 15 MB over the run; a 640x480 photo kept per request is 0.9 MB a request.
    steady = slope_mb_per_request(Screener(small_model(), gradcam=True, overlay_side=256))
    assert steady < 0.05, f"the page grows by {steady:.3f} MB a request"
    leaking = slope_mb_per_request(LeakingScreener(small_model(), gradcam=True, overlay_side=256))
    assert leaking > 0.5, f"the planted leak ({leaking:.3f} MB a request) went unseen: the check does not bite"


def test_overlays_are_drawn_at_the_display_size_not_the_photos():
    image = np.zeros((3000, 4000, 3), np.uint8)
    assert shrunk(image, 1024).shape == (768, 1024, 3) and shrunk(image, None) is image
    screener = Screener(small_model(), gradcam=True, overlay_side=200)
    (result,) = screener([np.full((900, 1200, 3), 120, np.uint8)], ["big.jpg"])
    assert result.overlay.shape == (150, 200, 3)
    with pytest.raises(ValueError, match="overlay_side=0"):
        Screener(small_model(), gradcam=True, overlay_side=0)


def test_predict_streams_a_folder_holding_one_batch_at_a_time(tmp_path):
    """iter_files has read at most one batch ahead of what it has answered; results come in file order with errors in
    place."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(22):
        (folder / f"{i:02d}.jpg").write_bytes(photo(64, 48, seed=i))
    (folder / "07b.jpg").write_bytes(b"not a photo")
    files = sorted(folder.iterdir())
    screener, reads = Screener(small_model(), gradcam=True), []
    read = screener.read
    screener.read = lambda data, name: reads.append(name) or read(data, name)
    answered = []
    for result in screener.iter_files(files, batch_size=4):
        answered.append(result)
        assert len(reads) - len(answered) <= 4  # files read (decoded) but not yet answered: one batch at most
    assert [Path(r.file).name for r in answered] == [p.name for p in files]
    assert [r.error is not None for r in answered] == [p.name == "07b.jpg" for p in files]


def test_predict_writes_each_overlay_and_keeps_none(tmp_path, monkeypatch):
    import predict

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.jpg").write_bytes(photo(96, 72, seed=i))
    model = small_model()
    model.deployment.calibrated.fill_(True)
    monkeypatch.setattr(predict, "load_calibrated", lambda *_: model)
    config = {"ckpt_path": "x.ckpt", "allow_uncalibrated": False, "tta": None, "gradcam": True, "max_pixels": 10**8,
              "bands": None, "quality": None, "crop": "none", "input": str(folder), "batch_size": 4,
              "allocator": {"retain_mb": 0}, "paths": {"output_dir": str(tmp_path / "out")}}  # fmt: skip
    results = predict.run_predict(config)
    assert len(results) == 6 and all(r.overlay is None for r in results)
    assert len(list((tmp_path / "out" / "gradcam").glob("*.png"))) == 6


def test_every_photo_is_decoded_and_checked_on_one_worker_thread():
    """Concurrent uploads are decoded, screened and encoded on one thread: a pool thread per request each kept its own
    allocator arena of freed photo arrays (the page held 5.5 GB after twenty photos)."""
    import threading

    import httpx

    from lesion.serving.webapp import create_app, serving

    threads = set()

    class Recording(Screener):
        def read(self, data, name):
            threads.add(threading.get_ident())
            return super().read(data, name)

        def __call__(self, images, names):
            threads.add(threading.get_ident())
            return super().__call__(images, names)

    with serving(create_app(Recording(small_model()), max_queue=8)) as url:

        def post() -> None:
            headers = {"Content-Type": "image/jpeg"}
            answer = httpx.post(f"{url}/api/screen", content=photo(), headers=headers, timeout=60)
            assert answer.status_code == 200

        clients = [threading.Thread(target=post) for _ in range(6)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=120)
    assert len(threads) == 1 and threading.main_thread().ident not in threads
