"""python bench/predict_memory.py --ckpt CKPT [--photos 1000] [--folder DIR] [--plot rss.png] [--app-arg key=value ...]

predict.py's memory over a folder: `--photos` photos (0.3 to 12 megapixels, JPEG / PNG / WebP, the mix of
bench/app_memory.py) written to a folder, then `python predict.py ckpt_path=CKPT input=<folder>` as its own process,
its resident memory (VmRSS) sampled every 0.2 s against the photos screened so far (read from its progress bar).
Prints start (after the first batch), peak, end and the slope per 100 photos of a least-squares line through the second
half: a predict.py that accumulates photos or overlays grows with the folder, one that streams does not.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from app_memory import photos, rss_mb, slope_per_100  # noqa: E402

SUFFIX = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp"}


def write_folder(folder: Path, count: int) -> None:
    mix = photos()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        data, kind = mix[i % len(mix)]
        (folder / f"photo_{i:05d}{SUFFIX[kind]}").write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a calibrated checkpoint (train.py, eval.py)")
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--folder", help="where to write the photos (default: a temporary folder, removed after)")
    parser.add_argument("--plot", help="a PNG of RSS against photos screened")
    parser.add_argument("--app-arg", nargs="*", default=[], help="predict.py overrides, e.g. gradcam=false")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.folder or Path(scratch) / "photos")
        write_folder(folder, args.photos)
        cmd = [sys.executable, str(ROOT / "predict.py"), f"ckpt_path={Path(args.ckpt).resolve()}", f"input={folder}"]
        cmd += [f"hydra.run.dir={scratch}/run", *args.app_arg]
        env = os.environ | {"NO_ALBUMENTATIONS_UPDATE": "1"}
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        done, samples = [0], []

        def progress() -> None:  # tqdm redraws with \r: read raw bytes and take the latest "n/total"
            buffer = b""
            while chunk := process.stderr.read1(4096):
                buffer = (buffer + chunk)[-4096:]
                found = re.findall(rb"(\d+)/" + str(args.photos).encode(), buffer)
                if found:
                    done[0] = int(found[-1])

        reader = threading.Thread(target=progress, daemon=True)
        reader.start()
        start = time.perf_counter()
        while process.poll() is None:
            try:
                samples.append((done[0], rss_mb(process.pid)))
            except (FileNotFoundError, AttributeError):
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - start
        reader.join(timeout=10)
        if process.returncode:
            raise SystemExit(f"predict.py failed (exit {process.returncode})")
        screened = [s for s in samples if s[0] > 0]
        peak = max(s[1] for s in samples)
        print("| photos | start RSS MB | peak RSS MB | end RSS MB | slope MB / 100 photos | seconds |")
        print("|---:|---:|---:|---:|---:|---:|")
        print(f"| {args.photos} | {screened[0][1]:.0f} | {peak:.0f} | {samples[-1][1]:.0f} | "
              f"{slope_per_100(screened):+.1f} | {seconds:.0f} |")  # fmt: skip
        if args.plot:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(7, 4))
            ax.plot([s[0] for s in samples], [s[1] for s in samples], lw=1)
            ax.set(xlabel="photos screened", ylabel="predict.py RSS (MB)", title="predict.py resident memory")
            fig.tight_layout()
            fig.savefig(args.plot, dpi=120)
            print(args.plot)


if __name__ == "__main__":
    main()
