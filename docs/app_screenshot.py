"""python docs/app_screenshot.py ckpt_path=... [image=...]: docs/app.png, the phone page with a real result.

Serves app.py's page on 127.0.0.1, opens it in headless Chromium (Debian's, through Playwright) at a phone's size,
uploads a lesion image and saves a screenshot of the whole page.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

import lesion.runs.config  # noqa: E402,F401
from app import build_app  # noqa: E402
from lesion.runs.config import to_plain  # noqa: E402
from lesion.serving.webapp import serving  # noqa: E402


def main() -> None:
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    image = args.pop("image", str(ROOT.parent / "shared/data/isic2018/ISIC2018_Task3_Training_Input/ISIC_0024310.jpg"))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        config = to_plain(compose("app", overrides=[f"{k}={v}" for k, v in args.items()] + ["paths.output_dir=/tmp"]))
    out = ROOT / "docs" / "app.png"
    with serving(build_app(config)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=1.5, is_mobile=True)
        page.goto(url + "/")
        page.set_input_files("#gallery", image)
        page.wait_for_selector("#result", state="visible", timeout=120_000)
        page.wait_for_function("document.getElementById('overlay').naturalWidth > 0")
        page.screenshot(path=str(out), full_page=True)
        browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
