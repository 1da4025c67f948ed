"""Using a trained model: predict.py, export.py (ONNX/TorchScript parity, metadata, model card), the web page."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from conftest import SHARED_ISIC2018, TINY, compose_config
from fakes import jpeg
from PIL import Image

from eval import evaluate
from export import run_export
from lesion.models.backbones import build_backbone
from lesion.models.loading import assemble, load_model
from lesion.serving.explain import last_feature_map
from lesion.serving.export import ScreeningNet
from lesion.serving.inference import DISCLAIMER, Screener
from predict import run_predict
from train import train

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict:
    """One tiny trained and evaluated run, shared by this module's tests."""
    run, ev = tmp_path_factory.mktemp("train"), tmp_path_factory.mktemp("eval")
    train(compose_config("train", [*TINY, "data.num_val=16", "data.num_test=16"], run))
    ckpt = json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    overrides = [f"ckpt_path={ckpt}", "bootstrap.resamples=20", "robustness.max_images=8", "fairness.min_positives=1"]
    evaluate(compose_config("eval", overrides, ev))
    return {"ckpt": ckpt, "run": run, "eval": ev}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries almost no data: a decompression-bomb stand-in."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def phone_photos(folder: Path) -> None:
    """padded.jpg (2 kB after the image), motion.jpg (a "motion photo": an MP4 after the image), WebP and HEIC."""
    import io

    from PIL import Image
    from pillow_heif import register_heif_opener

    register_heif_opener()
    rng = np.random.default_rng(5)
    (folder / "padded.jpg").write_bytes(jpeg(11, size=40) + rng.integers(0, 255, 2048, dtype=np.uint8).tobytes())
    mp4 = b"\x00\x00\x00\x18ftypmp42" + rng.integers(0, 255, 4000, dtype=np.uint8).tobytes()
    (folder / "motion.jpg").write_bytes(jpeg(12, size=40) + mp4)
    image = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    for name, kind in (("photo.webp", "WEBP"), ("photo.heic", "HEIF")):
        buffer = io.BytesIO()
        image.save(buffer, format=kind)
        (folder / name).write_bytes(buffer.getvalue())


def test_predict_writes_a_row_per_file_and_a_clear_error_per_bad_file(trained, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"spot{i}.jpg").write_bytes(jpeg(i, size=40))
    (photos / "notes.txt").write_text("not an image")
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "cut.jpg").write_bytes(jpeg(7, size=40)[:200])
    (photos / "bomb.png").write_bytes(png_header_only(60_000, 60_000))  # 3.6e9 px: PIL's own ceiling
    (photos / "big.png").write_bytes(png_header_only(5_000, 5_000))  # 25 Mpx: over max_pixels below
    phone_photos(photos)  # what phones write: motion photos, padding, WebP, HEIC
    out = tmp_path / "out"
    overrides = [f"ckpt_path={trained['ckpt']}", f"input={photos}", "max_pixels=10000000", "quality.enabled=false"]
    results = run_predict(compose_config("predict", overrides, out))
    assert len(results) == 12
    table = pd.read_csv(out / "predictions.csv").set_index("file")
    errors = table["error"].dropna().to_dict()
    assert {Path(f).name: e for f, e in errors.items()}.keys() == {
        "notes.txt",
        "empty.jpg",
        "cut.jpg",
        "bomb.png",
        "big.png",
    }
    reasons = {Path(f).name: e for f, e in errors.items()}
    assert "not a JPEG, PNG, BMP, WebP or HEIC/HEIF" in reasons["notes.txt"] and "empty" in reasons["empty.jpg"]
    assert "truncated JPEG" in reasons["cut.jpg"] and "decompression bomb" in reasons["bomb.png"]
    assert "over the limit of 10,000,000" in reasons["big.png"] and str(photos / "big.png") in reasons["big.png"]
    good = table[table["error"].isna()]
    assert len(good) == 7 and good["p_malignant"].between(0, 1).all()
    assert {"padded.jpg", "motion.jpg", "photo.webp", "photo.heic"} <= {Path(f).name for f in good.index}
    threshold = float(load_model(trained["ckpt"]).deployment.threshold)
    assert ((good["p_malignant"] > threshold) == (good["risk_band"] == "elevated")).all()
    assert (good["decision"].isin(["refer", "no referral"])).all()
    assert (table["note"] == DISCLAIMER).all()
    for overlay in good["gradcam"]:
        assert Path(overlay).stat().st_size > 0
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["disclaimer"] == DISCLAIMER and len(summary["predictions"]) == 12


def test_the_screener_runs_the_tta_its_threshold_was_fitted_under_and_refuses_another(trained):
    model = load_model(trained["ckpt"])
    model.deployment.temperature.fill_(1.7)
    model.hparams.tta = "flip"  # as the recipe's checkpoints: the operating point was fitted on flip-averaged logits
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        views = [x, x.flip(-1), x.flip(-2), x.flip(-1, -2)]
        mean_logits = torch.stack([model.eval_net(v) for v in views]).mean(0)
        expected = model.malignant_probability((mean_logits / 1.7).softmax(-1))
    for confirmed in (None, "flip", True):  # no second round of flips on top of the model's own
        screener = Screener(model, tta=confirmed)
        assert screener.tta == "flip"
        torch.testing.assert_close(screener.probabilities(x), expected)
    for other in (False, "dihedral"):
        refused = f"tta={other}: .*fitted under model.tta=flip.*eval.py ckpt_path=.*tta={other}"
        with pytest.raises(ValueError, match=refused):
            Screener(model, tta=other)
    with pytest.raises(ValueError, match="tta='rot' is not a test-time augmentation"):
        Screener(model, tta="rot")


def test_gradcam_targets_the_last_feature_map_and_overlays_the_photo(trained):
    resnet = build_backbone("resnet50", num_classes=2)
    assert last_feature_map(resnet, 64) is resnet.layer4
    lite = build_backbone("tf_efficientnet_lite0", num_classes=2)
    assert last_feature_map(lite, 64) is lite.bn2
    screener = Screener(load_model(trained["ckpt"]), gradcam=True)
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    result = screener([image], ["x.jpg"])[0]
    assert result.overlay.shape == image.shape and result.overlay.dtype == np.uint8


def test_onnx_export_matches_pytorch_on_32_images_with_metadata(trained, tmp_path):
    written = run_export(compose_config("export", [f"ckpt_path={trained['ckpt']}", "card=false"], tmp_path))
    model = load_model(trained["ckpt"])
    session = ort.InferenceSession(written["model"], providers=["CPUExecutionProvider"])
    images = torch.rand(32, *model.data_config["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ScreeningNet(model)(images)[1].numpy()
        direct = model.malignant_probability((model(
            (images - torch.tensor(model.data_config["mean"]).view(1, 3, 1, 1))
            / torch.tensor(model.data_config["std"]).view(1, 3, 1, 1)
        ) / model.deployment.temperature).softmax(-1)).numpy()  # fmt: skip
    np.testing.assert_allclose(expected, direct, atol=1e-6)
    probs, p_malignant = session.run(None, {"image": images.numpy()})
    assert np.abs(p_malignant - expected).max() <= 1e-4
    assert probs.shape == (32, 2)
    single = session.run(["p_malignant"], {"image": images[:1].numpy()})[0]  # the batch axis is dynamic
    assert abs(single[0] - expected[0]) <= 1e-4
    meta = session.get_modelmeta().custom_metadata_map
    assert float(meta["threshold"]) == pytest.approx(float(model.deployment.threshold))
    assert float(meta["temperature"]) == pytest.approx(float(model.deployment.temperature))
    assert json.loads(meta["mean"]) == pytest.approx(model.data_config["mean"])
    assert json.loads(meta["input_size"]) == model.data_config["input_size"]


def test_onnx_from_a_raw_phone_photo_matches_predict_py(trained, tmp_path):
    # What a mobile app does with the ONNX file: decode the photo, resize it as the metadata says (area averaging to
    # shrink, OpenCV INTER_AREA), scale to [0, 1], run the graph; predict.py on the same file must agree.
    import cv2

    written = run_export(compose_config("export", [f"ckpt_path={trained['ckpt']}", "card=false"], tmp_path / "x"))
    session = ort.InferenceSession(written["model"], providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert "area averaging when shrinking" in meta["resize"] and json.loads(meta["clahe"]) is None
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:900, :1200]
    photo = np.dstack([150 + 50 * np.sin(xx / 40), 120 + 40 * np.cos(yy / 30), 110 + 30 * np.sin((xx + yy) / 50)])
    photo = np.clip(photo + rng.normal(0, 12, photo.shape), 0, 255).astype(np.uint8)  # sensor noise
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "phone.jpg"
    path.write_bytes(cv2.imencode(".jpg", photo[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes())
    overrides = [f"ckpt_path={trained['ckpt']}", f"input={path}", "quality.enabled=false", "gradcam=false"]
    (result,) = run_predict(compose_config("predict", overrides, tmp_path / "p"))
    _, height, width = json.loads(meta["input_size"])
    decoded = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)  # the app's own decode
    image = cv2.resize(decoded, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    (p_onnx,) = session.run(["p_malignant"], {"image": image.transpose(2, 0, 1)[None]})[0]
    assert abs(float(p_onnx) - result.p_malignant) <= 1e-3


def test_torchscript_export_matches_pytorch_and_carries_metadata(trained, tmp_path):
    overrides = [f"ckpt_path={trained['ckpt']}", "format=torchscript", "card=false"]
    written = run_export(compose_config("export", overrides, tmp_path))
    model = load_model(trained["ckpt"])
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(written["model"], _extra_files=extra)
    images = torch.rand(4, *model.data_config["input_size"])
    with torch.no_grad():
        torch.testing.assert_close(scripted(images)[1], ScreeningNet(model)(images)[1], atol=1e-5, rtol=0)
    assert float(json.loads(extra["metadata.json"])["threshold"]) == pytest.approx(float(model.deployment.threshold))


def test_export_writes_a_model_card_from_the_eval_artifacts(trained, tmp_path):
    overrides = [f"ckpt_path={trained['ckpt']}", f"eval_search={trained['eval'].parent}"]
    written = run_export(compose_config("export", overrides, tmp_path))
    card = Path(written["card"]).read_text()
    for heading in ("Intended use", "Out-of-scope use", "Training data", "Metrics at the operating point", "Fairness",
                    "Robustness", "Limitations"):  # fmt: skip
        assert f"## {heading}" in card, heading
    fairness = (trained["eval"] / "fairness.md").read_text().splitlines()
    table_row = [line for line in fairness if line.startswith("| ")][-1]
    assert table_row in card
    assert (
        next(line for line in (trained["eval"] / "robustness.md").read_text().splitlines() if "gaussian_blur" in line)
        in card
    )
    report = json.loads((trained["eval"] / "metrics.json").read_text())
    assert f"| sensitivity | {report['test_op/recall']:.3f} |" in card
    assert "Not evaluated" not in card and DISCLAIMER in card


def test_app_checks_type_size_and_bytes(trained, tmp_path):
    from fastapi.testclient import TestClient

    from app import build_app

    overrides = [f"ckpt_path={trained['ckpt']}", "max_upload_mb=0.001", "quality.enabled=false"]  # the gate: below
    config = compose_config("app", overrides, tmp_path)
    client = TestClient(build_app(config))
    assert "not a diagnosis" in client.get("/").text.lower()
    ok = client.post("/api/screen", content=jpeg(1, size=20), headers={"Content-Type": "image/jpeg"})
    assert ok.status_code == 200 and 0 <= ok.json()["p_malignant"] <= 1 and ok.json()["disclaimer"] == DISCLAIMER
    assert ok.json()["overlay"].startswith("data:image/png;base64,")
    text = client.post("/api/screen", content=b"hello", headers={"Content-Type": "text/plain"})
    assert text.status_code == 415 and "not a photo" in text.json()["error"]
    fake = client.post("/api/screen", content=b"hello", headers={"Content-Type": "image/jpeg"})
    assert fake.status_code == 400 and "could not be read" in fake.json()["error"]
    big = client.post("/api/screen", content=jpeg(1, size=200), headers={"Content-Type": "image/jpeg"})
    assert big.status_code == 413 and "limit" in big.json()["error"]


def posted_together(app, count: int) -> list:
    """`count` photos posted to the served `app` 50 ms apart, each from its own thread; the responses."""
    import threading
    import time

    import httpx

    from lesion.serving.webapp import serving

    answers = []
    with serving(app) as url:

        def post() -> None:
            response = httpx.post(f"{url}/api/screen", content=jpeg(1, size=20), headers={"Content-Type": "image/jpeg"})
            answers.append(response)

        threads = [threading.Thread(target=post) for _ in range(count)]
        for thread in threads:
            thread.start()
            time.sleep(0.05)
        for thread in threads:
            thread.join(timeout=60)
    return answers


def test_app_bounds_its_queue_with_503_and_retry_after(trained):
    import time

    from lesion.serving.webapp import create_app

    class SlowScreener(Screener):  # one second a photo: the requests below all arrive while the first is checked
        def __call__(self, images, names):
            time.sleep(1.0)
            return super().__call__(images, names)

    answers = posted_together(create_app(SlowScreener(load_model(trained["ckpt"])), max_queue=1), 5)
    codes = sorted(r.status_code for r in answers)
    assert codes == [200, 200, 503, 503, 503]  # one checked, one waiting, the rest refused
    busy = next(r for r in answers if r.status_code == 503)
    assert int(busy.headers["Retry-After"]) >= 1 and "try again" in busy.json()["error"]


def test_app_load_bench_reports_latency_status_codes_and_rss(trained):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    cmd = [sys.executable, "bench/app_load.py", "--ckpt", trained["ckpt"], "--concurrency", "4", "--requests", "8"]
    cmd += ["--max-queue", "1", "--size", "320x240", "--time-limit", "60"]
    env = os.environ | {"NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    rows = [line for line in out.splitlines() if line.startswith(("| 200 |", "| 503 |"))]
    assert rows and sum(int(r.split("|")[2]) for r in rows) == 8
    assert "answered (200) per second" in out and "peak RSS" in out


def test_memory_benches_report_rss_against_requests_and_photos(trained, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = os.environ | {"NO_ALBUMENTATIONS_UPDATE": "1"}
    cmd = [sys.executable, "bench/app_memory.py", "--ckpt", trained["ckpt"], "--requests", "12", "--max-queue", "1"]
    cmd += ["--port", "8791", "--plot", str(tmp_path / "app.png")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    phases = [line.split("|")[1].strip() for line in done.stdout.splitlines() if line.startswith(("| seq", "| con"))]
    assert phases == ["sequential", "concurrent"]
    assert "peak" in done.stdout and (tmp_path / "app.png").is_file()
    cmd = [sys.executable, "bench/predict_memory.py", "--ckpt", trained["ckpt"], "--photos", "12"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = [line for line in done.stdout.splitlines() if line.startswith("| 12 |")]
    assert len(row.strip("|").split("|")) == 6


def test_web_page_in_a_real_browser(trained, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(
            f"BROWSER TEST SKIPPED: {CHROMIUM} is missing; install Debian's chromium (apt-get install chromium)"
        )
    if not SHARED_ISIC2018.is_dir():
        pytest.skip(f"needs a real lesion image from {SHARED_ISIC2018}, which is absent (a fresh clone)")
    playwright = pytest.importorskip("playwright.sync_api")
    from app import build_app
    from lesion.serving.webapp import serving

    lesion_image = next(SHARED_ISIC2018.glob("ISIC2018_Task3_Training_Input/*.jpg"))
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a photo")
    config = compose_config("app", [f"ckpt_path={trained['ckpt']}", "quality.enabled=false"], tmp_path)
    with serving(build_app(config)) as url, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
        page.goto(url + "/")
        assert "not a diagnosis" in page.inner_text("#disclaimer").lower()
        assert page.get_attribute("#camera", "capture") == "environment"
        assert page.get_attribute("#camera", "accept") == "image/*,.heic,.heif,.webp"
        page.set_input_files("#gallery", str(lesion_image))
        page.wait_for_selector("#framer", state="visible", timeout=30_000)  # frame the lesion first
        box = page.locator("#box").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] / 2 - 15, box["y"] + box["height"] / 2 + 5, steps=5)  # move it
        page.mouse.up()
        handle = page.locator("#handle").bounding_box()
        grip = (handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
        page.mouse.move(*grip)
        page.mouse.down()
        page.mouse.move(grip[0] - 40, grip[1] - 40, steps=5)  # make it 40 px smaller from its corner
        page.mouse.up()
        moved = page.locator("#box").bounding_box()
        assert moved["width"] == pytest.approx(box["width"] - 40, abs=3) and moved["x"] < box["x"]
        scale = page.evaluate(
            "document.getElementById('photo').naturalWidth / document.getElementById('photo').clientWidth"
        )
        with page.expect_response("**/api/screen") as answer:
            page.click("#send")
        received = answer.value.json()["image_size"]
        side = (moved["width"]) * scale  # the square, in the photo's own pixels (border included in the box)
        assert received[0] == received[1] and received[0] == pytest.approx(side, abs=3), (received, side)
        page.wait_for_selector("#result", state="visible", timeout=60_000)
        assert page.inner_text("#probability").endswith("%")
        assert page.inner_text("#band") in ("Low", "Elevated")
        assert page.inner_text("#message")
        assert page.get_attribute("#overlay", "src").startswith("data:image/png;base64,")
        page.wait_for_function("document.getElementById('overlay').naturalWidth > 0")
        page.set_input_files("#gallery", str(text_file))
        page.wait_for_selector("#error", state="visible", timeout=30_000)
        assert "not a photo" in page.inner_text("#error")
        assert not page.is_visible("#result")
        browser.close()


def skin_like(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A skin-toned close-up with a darker irregular spot and fine texture: what the gate should let through."""
    import cv2

    yy, xx = np.mgrid[:size, :size] / size - 0.5
    spot = (np.sqrt(xx**2 + yy**2) < 0.2 + 0.05 * np.sin(6 * np.arctan2(yy, xx) + rng.uniform(0, 6))).astype(float)
    image = np.array([200, 150, 130]) * (1 - 0.5 * cv2.GaussianBlur(spot, (5, 5), 1.5)[..., None])
    return np.clip(image + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)


def test_quality_gate_refuses_what_cannot_be_judged_with_the_right_reason():
    import cv2

    from lesion.data.transforms import LesionTransforms
    from lesion.serving.quality import RETAKE, QualityGate
    from lesion.stats.quality import fit_quality

    rng = np.random.default_rng(0)
    to_input = LesionTransforms({"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.5] * 3}).to_input_size
    settings = {"min_side": 48, "sharpness_percentile": 1.0, "exposure_percentile": 99.5, "exposure_floor": 0.05}
    settings |= {"ood_percentile": 99.0, "ood": "energy"}
    val_logits = torch.tensor([[2.0, -1.0], [1.5, 0.0], [0.5, 0.4]] * 20)
    thresholds = fit_quality([skin_like(rng) for _ in range(100)], to_input, val_logits, settings)
    gate = QualityGate(thresholds, to_input, min_side=48)
    clean = [skin_like(rng) for _ in range(50)]
    assert sum(gate.check_image(im) is not None for im in clean) <= 2  # clean close-ups pass
    photo = clean[0]
    cases = {
        "too_small": np.zeros((1, 1, 3), np.uint8) + 128,  # the 1x1 image of the issue
        "featureless": np.full((96, 96, 3), (180, 140, 120), np.uint8),  # a flat colour
        "underexposed": (photo * 0.05).astype(np.uint8),
        "overexposed": np.clip(photo.astype(int) * 3, 0, 255).astype(np.uint8),
        "blurred": cv2.GaussianBlur(photo, (0, 0), 4),
    }
    for reason, image in cases.items():
        refused = gate.check_image(image)
        assert refused is not None and refused[0] == reason, (reason, refused)
        assert refused[1].startswith(RETAKE[reason][:20])
    assert "1x1 pixels" in gate.check_image(cases["too_small"])[1]
    # Out of distribution: an energy above the val images' 99th percentile (a flat 2-class logit pair).
    assert gate.check_outputs(torch.tensor([[2.0, -1.0], [0.0, 0.0]])) == [None, ("not_skin", RETAKE["not_skin"])]
    # A checkpoint without fitted thresholds: size and flatness only.
    unfitted = QualityGate(None, to_input, min_side=48)
    assert unfitted.check_image(cases["blurred"]) is None and unfitted.check_image(cases["too_small"])[0] == "too_small"


def test_the_gate_judges_exposure_where_the_lesion_is_not_over_a_dark_border():
    """A well-lit lesion on a scanned slide's black border (or a dark background) is judged in the centred square;
    the same border around a darkened lesion is still too dark, and region 1 keeps the whole-frame rule."""
    from lesion.data.transforms import LesionTransforms
    from lesion.serving.quality import QualityGate
    from lesion.stats.quality import fit_quality

    rng = np.random.default_rng(1)
    to_input = LesionTransforms({"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.5] * 3}).to_input_size
    settings = {"min_side": 48, "sharpness_percentile": 1.0, "exposure_percentile": 99.5, "exposure_floor": 0.05}
    settings |= {"ood_percentile": 99.0, "ood": "energy"}
    training = [skin_like(rng, size=160) for _ in range(100)]
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.4]] * 10)
    centre = QualityGate(fit_quality(training, to_input, logits, settings | {"region": 0.5}), to_input, 48)
    frame = QualityGate(fit_quality(training, to_input, logits, settings), to_input, 48)
    assert centre.thresholds["region"] == 0.5 and frame.thresholds["region"] == 1.0

    def bordered(image: np.ndarray) -> np.ndarray:  # a black border a fifth of the side wide, all round
        out = np.zeros_like(image)
        out[32:128, 32:128] = image[32:128, 32:128]
        return out

    clean = [skin_like(rng, size=160) for _ in range(20)]
    assert all(centre.check_image(bordered(im)) is None for im in clean)
    assert all(frame.check_image(bordered(im))[0] == "underexposed" for im in clean)  # the old rule condemns them
    dark = [bordered((im * 0.05).astype(np.uint8)) for im in clean]
    assert all(centre.check_image(im)[0] == "underexposed" for im in dark)
    with pytest.raises(ValueError, match="quality.region"):
        QualityGate(fit_quality(training[:5], to_input, logits, settings | {"region": 0}), to_input, 48)


def test_a_widened_reference_accepts_the_sites_photos_and_still_refuses_what_neither_has():
    from lesion.stats.quality import feature_residual, fit_feature_residual, widen_feature_residual

    generator = torch.Generator().manual_seed(0)
    source = torch.zeros(200, 10)
    source[:, :3] = torch.randn(200, 3, generator=generator)  # the source's images vary along e1-e3
    site = torch.zeros(60, 10)
    site[:, 3] = 2 + torch.randn(60, generator=generator)  # the site's along e4
    fitted = fit_feature_residual(source, components=3)
    widened = widen_feature_residual(fitted, site, components=2)
    assert feature_residual(site, fitted).min() > 0.9 and feature_residual(site, widened).max() < 1e-3
    assert feature_residual(source, widened).max() < 1e-3  # the source's images stay inside
    unlike = torch.zeros(5, 10)
    unlike[:, 8] = 3.0
    assert feature_residual(unlike, widened).min() > 0.99 and widened["components"] == 5


def test_feature_residual_is_the_share_of_a_feature_outside_the_training_subspace():
    from lesion.stats.quality import feature_residual, fit_feature_residual

    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(8, 3, generator=generator))[0]  # training features vary in 3 of 8 directions
    offset = torch.randn(8, generator=generator)
    features = torch.randn(500, 3, generator=generator) * torch.tensor([5.0, 3.0, 2.0]) @ basis.T + offset
    fitted = fit_feature_residual(features, components=3)
    assert fitted["directions"].shape == (3, 8) and fitted["components"] == 3
    queries = torch.randn(6, 8, generator=generator) * 4 + offset
    # Independently: the least-squares distance of each query to the training features' affine span, over its length.
    centred = (queries - features.mean(0)).double().numpy()
    coefficients = np.linalg.lstsq(basis.double().numpy(), centred.T, rcond=None)[0]
    outside = np.linalg.norm(centred.T - basis.double().numpy() @ coefficients, axis=0)
    expected = outside / np.linalg.norm(centred, axis=1)
    np.testing.assert_allclose(feature_residual(queries, fitted).numpy(), expected, atol=1e-4)
    assert float(feature_residual(features, fitted).max()) < 1e-3  # training features lie in the subspace
    away = torch.randn(8, generator=generator)
    away -= basis @ (basis.T @ away)  # a direction the training features never vary in
    assert feature_residual((features.mean(0) + 5 * away)[None], fitted).item() == pytest.approx(1.0, abs=1e-4)


def test_the_gate_scores_the_pooled_features_the_screener_sees(trained):
    from lesion.models.features import pooled_features
    from lesion.serving.quality import RETAKE, QualityGate

    model = load_model(trained["ckpt"])
    fitted = model.deployment.quality["feature_residual"]  # train.py's default: quality.ood=residual
    assert model.deployment.quality["ood"] == "residual" and 0 < fitted["max_residual"] <= 1
    screener = Screener(model, quality={"enabled": True, "min_side": 16})
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(3)]
    batch = torch.stack([screener.tensor(im) for im in photos])
    _, logits, features = screener.scores(batch)
    net = model.eval_net.eval()
    with torch.no_grad():  # timm's own pre-logits: what the classifier layer reads
        pre_logits = net.forward_head(net.forward_features(batch), pre_logits=True)
        assert torch.allclose(features, pre_logits, atol=1e-5)
        assert torch.allclose(pooled_features(model, batch), pre_logits, atol=1e-5)
    lowered = dict(model.deployment.quality, feature_residual=dict(fitted, max_residual=-1.0))  # everything is too far
    gate = QualityGate(lowered, screener.transforms.to_input_size, 16)
    assert gate.check_outputs(logits, features) == [("not_skin", RETAKE["not_skin"])] * 3
    with pytest.raises(ValueError, match="pass them"):
        gate.check_outputs(logits)
    pair = assemble([trained["ckpt"], trained["ckpt"]])
    assert torch.allclose(pooled_features(pair, batch), torch.cat([pre_logits, pre_logits], dim=1), atol=1e-5)


def test_the_screener_resizes_each_photo_once_for_the_gate_and_the_model(trained):
    model = load_model(trained["ckpt"])
    screener = Screener(model, quality={"enabled": True, "min_side": 16})
    rng = np.random.default_rng(1)
    photos = [skin_like(rng, size) for size in (300, 61, 128)]  # down-, up- and down-scaled to the input size
    resize, calls = screener.transforms.to_input_size, []
    counted = lambda image: calls.append(image.shape) or resize(image)  # noqa: E731
    screener.transforms.to_input_size = screener.gate.to_input_size = counted  # the model's resize and the gate's
    results = screener(photos, ["a.png", "b.png", "c.png"])
    assert calls == [im.shape for im in photos]  # once per photo
    screener.transforms.to_input_size = screener.gate.to_input_size = resize
    for photo in photos:  # the gate's verdict and the model's input are those of the photo resized by each itself
        assert screener.gate.check_image(photo, resize(photo)) == screener.gate.check_image(photo)
        assert torch.equal(screener.tensor(resize(photo)), screener.tensor(photo))
    kept = [i for i, r in enumerate(results) if r.decision != "retake"]
    assert kept, [r.quality for r in results]
    expected = screener.probabilities(torch.stack([screener.tensor(photos[i]) for i in kept]))
    assert [results[i].p_malignant for i in kept] == pytest.approx(expected.tolist(), abs=1e-6)


def test_predict_answers_retake_without_a_probability_and_the_card_shows_the_thresholds(trained, tmp_path):
    from lesion.serving.model_card import model_card

    model = load_model(trained["ckpt"])
    assert (
        model.deployment.quality is not None and model.deployment.quality["fitted_on"]["val_images"] == 16
    )  # fitted by train.py
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "dot.png").write_bytes(_png(np.zeros((1, 1, 3), np.uint8)))
    (photos / "flat.png").write_bytes(_png(np.full((200, 200, 3), 150, np.uint8)))
    results = run_predict(compose_config("predict", [f"ckpt_path={trained['ckpt']}", f"input={photos}"], tmp_path))
    table = pd.read_csv(tmp_path / "predictions.csv").set_index("file")
    assert (table["decision"] == "retake").all() and table["p_malignant"].isna().all()
    assert sorted(table["quality"]) == ["featureless", "too_small"] and all(r.p_malignant is None for r in results)
    card = model_card(model, Path(trained["ckpt"]), trained["eval"])
    assert f"under {model.deployment.quality['min_side']} px" in card and "of its pooled feature outside the" in card


def _png(image: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".png", image)[1].tobytes()


def test_predict_crop_center_screens_the_centred_square(trained, tmp_path):
    from lesion.serving.inference import center_square

    wide = np.zeros((60, 100, 3), np.uint8)
    wide[:, 20:80] = 200  # the centred 60x60 square is bright, the sides dark
    assert center_square(wide).shape == (60, 60, 3) and (center_square(wide) == 200).all()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "wide.png").write_bytes(_png(wide))
    (tmp_path / "in" / "square.png").write_bytes(_png(wide[:, 20:80].copy()))
    overrides = [f"ckpt_path={trained['ckpt']}", f"input={tmp_path / 'in'}", "crop=center", "quality.enabled=false"]
    results = {Path(r.file).name: r for r in run_predict(compose_config("predict", overrides, tmp_path / "out"))}
    assert results["wide.png"].p_malignant == pytest.approx(results["square.png"].p_malignant, abs=1e-6)
    with pytest.raises(ValueError, match="crop must be one of"):
        Screener(load_model(trained["ckpt"]), crop="left")


def clinic_csv(root: Path, n: int = 40) -> Path:
    """A clinic's CSV: its `source` column holds a provenance path per image (one image each), its `modality` column
    two groupings whose names hold `/`."""
    (root / "photos").mkdir(parents=True)
    rows = []
    for i in range(n):
        (root / "photos" / f"p{i}.jpg").write_bytes(jpeg(900 + i, 40))
        camera = "clinic/phone A" if i < n // 2 else "clinic/phone B"
        rows.append((f"photos/p{i}.jpg", ["benign", "malignant"][i % 2], f"archive/2024/batch_{i}/p{i}.jpg", camera))
    pd.DataFrame(rows, columns=["image", "label", "source", "modality"]).to_csv(root / "clinic.csv", index=False)
    return root


def external_csv_overrides(trained, root: Path) -> list[str]:
    return [f"ckpt_path={trained['ckpt']}", "data=csv", f"data.root={root}", "data.csv=clinic.csv"] + [
        "data.external=true", "data.num_workers=0", "bootstrap.resamples=20", "robustness.enabled=false",
    ]  # fmt: skip


def test_a_csv_whose_source_values_are_paths_is_evaluated_and_reports_only_real_groupings(trained, tmp_path):
    root = clinic_csv(tmp_path / "clinic")
    overrides = [*external_csv_overrides(trained, root), "fairness.enabled=false"]
    report = evaluate(compose_config("eval", overrides, tmp_path / "ev"))
    written = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    assert len(written) == 40 and set(written["image_id"]) == {f"photos/p{i}" for i in range(40)}
    assert written["referred"].tolist() == (written["p_malignant"] > report["threshold"]).tolist()
    assert not [k for k in report if k.startswith("test_by_source")]  # 40 parts of one image: not a grouping
    assert report["test_by_modality/clinic%2Fphone A/images"] == 20  # a part name holding / stays one part
    assert "| modality | clinic/phone B | 20 | 10 |" in (tmp_path / "ev" / "subgroups.md").read_text()


def test_a_report_that_fails_is_named_and_every_other_file_is_kept(trained, tmp_path, monkeypatch):
    import eval as eval_py

    def broken(*args, **kwargs):
        raise KeyError("images")

    monkeypatch.setattr(eval_py, "_fairness", broken)
    root = clinic_csv(tmp_path / "clinic")
    with pytest.raises(RuntimeError, match=r"1 report\(s\) failed: fairness \(KeyError: 'images'\)"):
        evaluate(compose_config("eval", [*external_csv_overrides(trained, root), "fairness.enabled=true"], tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["report_errors"] == {"fairness": "KeyError: 'images'"} and "test/auroc" in metrics
    assert len(pd.read_csv(tmp_path / "predictions.csv")) == 40
    assert (tmp_path / "roc.png").is_file() and (tmp_path / "domain_shift.md").is_file()


def test_app_py_bounds_its_queue_at_the_configured_max_queue(trained, monkeypatch, tmp_path):
    import time

    from app import build_app

    screen = Screener.__call__

    def slow(self, images, names):  # one second a photo: the requests below all arrive while the first is checked
        time.sleep(1.0)
        return screen(self, images, names)

    monkeypatch.setattr(Screener, "__call__", slow)
    config = compose_config("app", [f"ckpt_path={trained['ckpt']}", "max_queue=1", "gradcam=false"], tmp_path)
    answers = posted_together(build_app(config), 4)  # app.py's own wiring, from the composed config
    codes = sorted(r.status_code for r in answers)
    assert codes == [200, 200, 503, 503]  # max_queue=1: one checked, one waiting (the default 8 takes all)


def test_the_exported_graph_carries_the_ema_weights_the_recipe_evaluates_with(tmp_path):
    run = tmp_path / "run"
    train(compose_config("train", [*TINY, "model.ema_decay=0.9"], run))
    best = json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for key, value in ckpt["state_dict"].items():  # plant: the EMA's weights far from the trained ones
        if key.startswith("ema.module.") and value.is_floating_point() and value.ndim > 1:
            ckpt["state_dict"][key] = value + 0.5 * torch.randn(value.shape, generator=generator)
    planted = tmp_path / "planted.ckpt"
    torch.save(ckpt, planted)
    written = run_export(compose_config("export", [f"ckpt_path={planted}", "card=false"], tmp_path / "x"))
    model = load_model(str(planted))
    images = torch.rand(16, *model.data_config["input_size"], generator=generator)
    normalized = (images - torch.tensor(model.data_config["mean"]).view(1, 3, 1, 1)) / torch.tensor(
        model.data_config["std"]
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        ema, raw = (model.scores(net.eval()(normalized))[1].numpy() for net in (model.ema.module, model.net))
    assert np.abs(ema - raw).max() > 0.05, "premise: the planted EMA scores differ from the raw weights'"
    session = ort.InferenceSession(written["model"], providers=["CPUExecutionProvider"])
    _, exported = session.run(None, {"image": images.numpy()})
    assert np.abs(exported - ema).max() <= 1e-4  # the EMA, as eval.py and predict.py use it


def test_predict_py_keys_reach_its_answers(trained, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        (photos / f"spot{i}.jpg").write_bytes(jpeg(20 + i, size=120))
    base = [f"ckpt_path={trained['ckpt']}", f"input={photos}", "quality.enabled=false"]
    bands = ["bands.low=LOW-TEXT", "bands.elevated=HIGH-TEXT", "overlay_side=48", "batch_size=2"]
    run_predict(compose_config("predict", [*base, *bands], tmp_path / "a"))
    run_predict(compose_config("predict", [*base, "gradcam=false"], tmp_path / "b"))
    a, b = (pd.read_csv(tmp_path / d / "predictions.csv").set_index("file").sort_index() for d in ("a", "b"))
    assert (a["message"] == a["risk_band"].map({"low": "LOW-TEXT", "elevated": "HIGH-TEXT"})).all()
    np.testing.assert_allclose(a["p_malignant"], b["p_malignant"], atol=1e-6)  # batches of 2: the same scores
    assert all(max(Image.open(p).size) == 48 for p in a["gradcam"])  # overlay_side
    assert "gradcam" not in b and not (tmp_path / "b" / "gradcam").exists()  # gradcam=false: no overlays


def test_app_py_keys_reach_its_answers(trained, tmp_path):
    from fastapi.testclient import TestClient

    from app import build_app

    overrides = [f"ckpt_path={trained['ckpt']}", "quality.enabled=false", "bands.low=LOW-TEXT"]
    overrides += ["bands.elevated=HIGH-TEXT", "overlay_side=40", "max_pixels=20000"]
    client = TestClient(build_app(compose_config("app", overrides, tmp_path)))
    ok = client.post("/api/screen", content=jpeg(1, size=120), headers={"Content-Type": "image/jpeg"}).json()
    assert ok["message"] == {"low": "LOW-TEXT", "elevated": "HIGH-TEXT"}[ok["risk_band"]]
    overlay = Image.open(io.BytesIO(base64.b64decode(ok["overlay"].split(",", 1)[1])))
    assert max(overlay.size) == 40
    big = client.post("/api/screen", content=jpeg(2, size=160), headers={"Content-Type": "image/jpeg"})
    assert big.status_code == 400 and "20,000" in big.json()["error"]  # 25,600 pixels: over max_pixels
    uncalibrated = tmp_path / "uncalibrated.ckpt"
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    ckpt["state_dict"]["deployment.calibrated"] = torch.tensor(False)
    torch.save(ckpt, uncalibrated)
    refused = [f"ckpt_path={uncalibrated}", "quality.enabled=false"]
    with pytest.raises(ValueError, match="allow_uncalibrated"):
        build_app(compose_config("app", refused, tmp_path / "r"))
    build_app(compose_config("app", [*refused, "allow_uncalibrated=true"], tmp_path / "u"))
