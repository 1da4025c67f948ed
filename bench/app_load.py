"""python bench/app_load.py --ckpt CKPT [--concurrency 50] [--requests 200] [--time-limit 120] [--max-queue 8]
                           [--size 1600x1200] [--gradcam]

The phone page under load: app.py's app (the checkpoint's Screener, the bounded queue) served on 127.0.0.1 in this
process, and `--concurrency` clients posting the same synthetic phone-sized JPEG until `--requests` have been sent or
`--time-limit` seconds have passed (requests never leave 127.0.0.1). Prints throughput, p50/p95 latency of the
answered (200) and refused (503) requests, the status codes, and the process's peak RSS (server and clients).
"""

from __future__ import annotations

import argparse
import collections
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lesion.runs.config  # noqa: E402,F401  (run_id resolver)
from app import build_app  # noqa: E402
from lesion.runs.config import to_plain  # noqa: E402
from lesion.serving.webapp import serving  # noqa: E402


def phone_jpeg(width: int, height: int) -> bytes:
    """A smooth skin-coloured frame with a darker spot and sensor noise, JPEG quality 90, like a phone photo."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    spot = np.exp(-(((xx - width / 2) / (width / 10)) ** 2 + ((yy - height / 2) / (height / 10)) ** 2))
    image = np.stack([200 - 90 * spot, 150 - 80 * spot, 130 - 70 * spot], -1) + rng.normal(0, 4, (height, width, 3))
    return cv2.imencode(".jpg", np.clip(image, 0, 255).astype(np.uint8)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a calibrated checkpoint (train.py, eval.py)")
    parser.add_argument("--concurrency", type=int, default=50, help="clients posting at once")
    parser.add_argument("--requests", type=int, default=200, help="requests in all (the bound on work)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="no request starts after this many seconds")
    parser.add_argument("--max-queue", type=int, default=8, help="app.py max_queue")
    parser.add_argument("--size", default="1600x1200", help="the photo's WIDTHxHEIGHT")
    parser.add_argument("--gradcam", action="store_true", help="Grad-CAM overlays on (app.py's default; slower)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    overrides = [f"ckpt_path={Path(args.ckpt).resolve()}", f"max_queue={args.max_queue}", f"gradcam={args.gradcam}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        config = to_plain(compose("app", overrides=overrides + ["paths.output_dir=/tmp/lesion-app-load"]))
    photo = phone_jpeg(width, height).tobytes()
    results: list[tuple[int, float]] = []
    sent = collections.Counter()
    lock = threading.Lock()
    with serving(build_app(config)) as url:
        deadline = time.perf_counter() + args.time_limit

        def client(_: int) -> None:
            with httpx.Client(base_url=url, timeout=max(args.time_limit, 30.0)) as http:
                while True:
                    with lock:
                        if sent["n"] >= args.requests or time.perf_counter() > deadline:
                            return
                        sent["n"] += 1
                    start = time.perf_counter()
                    response = http.post("/api/screen", content=photo, headers={"Content-Type": "image/jpeg"})
                    with lock:
                        results.append((response.status_code, time.perf_counter() - start))

        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(client, range(args.concurrency)))
        wall = time.perf_counter() - start
    codes = collections.Counter(code for code, _ in results)
    print(
        f"{len(results)} requests, {args.concurrency} concurrent, {width}x{height} JPEG ({len(photo) / 1e3:.0f} kB), "
        f"max_queue {args.max_queue}, gradcam {args.gradcam}, {wall:.1f} s"
    )
    print("| status | requests | p50 s | p95 s | max s |")
    print("|---|---:|---:|---:|---:|")
    for code in sorted(codes):
        latency = np.array([t for c, t in results if c == code])
        p50, p95 = np.percentile(latency, [50, 95])
        print(f"| {code} | {codes[code]} | {p50:.2f} | {p95:.2f} | {latency.max():.2f} |")
    answered, rss_mb = codes.get(200, 0) / wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"answered (200) per second: {answered:.2f}; all responses per second: {len(results) / wall:.2f}")
    print(f"peak RSS (server and clients, one process): {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
