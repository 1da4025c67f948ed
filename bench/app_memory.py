"""python bench/app_memory.py --ckpt CKPT [--requests 1000] [--max-queue 8] [--plot rss.png] [--json out.json]
                              [--env KEY=VALUE ...] [--app-arg key=value ...]

The phone page's memory over a soak: `python app.py ckpt_path=CKPT` started as its own process on 127.0.0.1, then
`--requests` uploads (the first half one at a time, the second half from max_queue + 1 clients at once, so the queue
is full) of a mix of photos from 0.3 to 12 megapixels in JPEG, PNG and WebP. The server's resident memory (VmRSS of its
process) is sampled every 0.2 s and after every answered request. Prints start (after the first answer), peak, end,
and the slope per 100 requests of a least-squares line through the second half of each phase (the steady state); with
--plot, RSS against requests served. --env / --app-arg: environment variables and app.py overrides for the server
(to compare settings). Requests never leave 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = ((640, 480), (1200, 900), (2000, 1500), (3024, 4032), (4000, 3000))  # up to 12 MP, both orientations
FORMATS = ((".jpg", "image/jpeg"), (".png", "image/png"), (".webp", "image/webp"))


def photos() -> list[tuple[bytes, str]]:
    """One photo per size and format: a skin-coloured frame with a darker spot and sensor noise."""
    rng = np.random.default_rng(0)
    out = []
    for i, (width, height) in enumerate(SIZES):
        yy, xx = np.mgrid[:height, :width].astype(np.float32)
        spot = np.exp(-(((xx - width / 2) / (width / 10)) ** 2 + ((yy - height / 2) / (height / 10)) ** 2))
        image = np.stack([200 - 90 * spot, 150 - 80 * spot, 130 - 70 * spot], -1)
        image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)[..., ::-1]
        suffix, kind = FORMATS[i % len(FORMATS)]
        out.append((cv2.imencode(suffix, image)[1].tobytes(), kind))
        out.append((cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(), "image/jpeg"))
    return out


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory in MB: VmRSS (all of it), or RssAnon (its private heap and stacks, without the
    shared libraries' mapped pages: ~0.4 GB of app.py's RSS is torch's and Lightning's code)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024


def start_server(ckpt: str, port: int, max_queue: int, env: dict, app_args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "app.py"), f"ckpt_path={ckpt}", f"port={port}", f"max_queue={max_queue}"]
    cmd += ["hydra.run.dir=/tmp/lesion-app-memory", *app_args]
    server = subprocess.Popen(
        cmd, cwd=ROOT, env=os.environ | env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            if server.poll() is not None:
                raise SystemExit(f"app.py exited:\n{server.stderr.read()[-3000:]}") from None
            time.sleep(0.5)
    server.kill()
    raise SystemExit("app.py did not answer /healthz within 300 s")


def slope_per_100(points: list[tuple[int, float]]) -> float:
    """MB per 100 requests of the least-squares line through the second half of `points` (requests, MB)."""
    tail = points[len(points) // 2 :]
    if len(tail) < 3:
        return float("nan")
    x, y = np.array([p[0] for p in tail], float), np.array([p[1] for p in tail], float)
    return float(np.polyfit(x, y, 1)[0] * 100) if np.ptp(x) else float("nan")


def soak(base: str, pid: int, requests: int, clients: int, photos_: list, done: list, samples: list) -> dict:
    """Post `requests` photos from `clients` threads; records (requests answered, RSS MB) after each answer."""
    counts: dict = {}
    lock = threading.Lock()

    def post(i: int) -> None:
        data, kind = photos_[i % len(photos_)]
        with httpx.Client(timeout=600) as client:
            while True:
                answer = client.post(f"{base}/api/screen", content=data, headers={"content-type": kind})
                if answer.status_code != 503:
                    break
                time.sleep(0.2)  # the queue is full: retry, as the page tells its user to
        # 200 answers by decision (a retake skips the model's second half and Grad-CAM), other codes as they are
        key = answer.json().get("decision", answer.status_code) if answer.status_code == 200 else answer.status_code
        with lock:
            counts[key] = counts.get(key, 0) + 1
            done[0] += 1
            samples.append((done[0], rss_mb(pid)))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(post, range(requests)))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a calibrated checkpoint (train.py, eval.py)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--plot", help="a PNG of RSS against requests served")
    parser.add_argument("--json", help="the samples and figures as JSON")
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for the server's environment")
    parser.add_argument("--app-arg", nargs="*", default=[], help="app.py overrides, e.g. gradcam=false")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    server = start_server(str(Path(args.ckpt).resolve()), args.port, args.max_queue, env, args.app_arg)
    base, done, samples, figures = f"http://127.0.0.1:{args.port}", [0], [], {}
    try:
        figures["idle_mb"], idle_anon = rss_mb(server.pid), rss_mb(server.pid, "RssAnon")
        stop = threading.Event()

        def sampler() -> None:
            while not stop.wait(0.2):
                samples.append((done[0], rss_mb(server.pid)))

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        start = time.perf_counter()
        half = args.requests // 2
        phases = {"sequential": (half, 1), "concurrent": (args.requests - half, args.max_queue + 1)}
        for name, (count, clients) in phases.items():
            first = len(samples)
            codes = soak(base, server.pid, count, clients, photos(), done, samples)
            phase = [s for s in samples[first:]]
            figures[name] = {"requests": count, "clients": clients, "status": codes,
                             "peak_mb": max(s[1] for s in phase), "end_mb": phase[-1][1],
                             "slope_mb_per_100": slope_per_100(phase)}  # fmt: skip
        stop.set()
        thread.join()
        figures["seconds"] = round(time.perf_counter() - start, 1)
        figures["start_mb"] = next(s[1] for s in samples if s[0] >= 1)
        figures["peak_mb"] = max(s[1] for s in samples)
        figures["end_mb"] = rss_mb(server.pid)
        figures["end_anon_mb"], figures["idle_anon_mb"] = rss_mb(server.pid, "RssAnon"), idle_anon
    finally:
        server.terminate()
        server.wait(timeout=60)
    print("| phase | requests | clients | answers | peak RSS MB | end RSS MB | slope MB / 100 requests |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for name in phases:
        f = figures[name]
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(f["status"].items(), key=str))
        print(f"| {name} | {f['requests']} | {f['clients']} | {answers} | {f['peak_mb']:.0f} | {f['end_mb']:.0f} | "
              f"{f['slope_mb_per_100']:+.1f} |")  # fmt: skip
    print(
        f"idle {figures['idle_mb']:.0f} MB, start {figures['start_mb']:.0f} MB (after the first answer), "
        f"peak {figures['peak_mb']:.0f} MB, end {figures['end_mb']:.0f} MB (private heap: "
        f"{figures['idle_anon_mb']:.0f} MB idle, {figures['end_anon_mb']:.0f} MB at the end); "
        f"{args.requests} requests in {figures['seconds']:.0f} s; settings: {args.env or 'default'} {args.app_arg}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "samples": samples}, indent=1))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([s[0] for s in samples], [s[1] for s in samples], lw=1)
        ax.axvline(half, color="grey", ls="--", lw=0.8)
        ax.set(xlabel="requests answered", ylabel="server RSS (MB)", title="app.py resident memory over a soak")
        ax.text(half, ax.get_ylim()[0], f" {args.max_queue + 1} clients from here", va="bottom", fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(args.plot)


if __name__ == "__main__":
    main()
