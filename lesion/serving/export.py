"""A checkpoint as a self-describing file for phones and servers: ONNX (dynamic batch) or TorchScript.

The exported graph takes what a phone app has after resizing: RGB float32 in [0, 1], N x 3 x H x W at the model's
input size. Normalisation, the calibration temperature, the malignant-class sum and its Platt map are inside the
graph; it returns `probs` (calibrated class probabilities) and `p_malignant`. Resizing (and CLAHE, when the run used it)
happens before, as the metadata says; the decision is `p_malignant > threshold`, the threshold recorded in the metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lesion.models.loading import eval_transforms
from lesion.models.module import LesionClassifier
from lesion.models.tta import tta_logits, tta_mode

FORMATS = ("onnx", "torchscript")


class ScreeningNet(nn.Module):
    """[0, 1] RGB images -> (calibrated class probabilities, P(malignant)), preprocessing folded in."""

    def __init__(self, model: LesionClassifier):
        super().__init__()
        self.net = model.eval_net  # the weight EMA when the run kept one
        self.tta = tta_mode(model.hparams.get("tta", False))
        cfg = model.data_config
        self.register_buffer("mean", torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("temperature", model.deployment.temperature.detach().float().clone())
        self.register_buffer("malignant", model.malignant_mask.detach().float().clone())
        self.register_buffer("platt", model.deployment.platt.detach().float().clone())
        settings = eval_transforms(model).preprocess_settings()
        self.constancy_power = settings.get("color_constancy")
        if self.constancy_power and settings["clahe"]:
            raise ValueError(
                "this run used Shades of Gray before fixed CLAHE; the graph can hold only the colour constancy, "
                "after the app's CLAHE. Export a run without one of them"
            )

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.constancy_power:  # Shades of Gray, as lesion.data.transforms.ShadesOfGray (0-255 there, 0-1 here)
            p = self.constancy_power
            illuminant = image.clamp_min(1e-6).pow(p).mean(dim=(2, 3), keepdim=True).pow(1.0 / p)
            gains = illuminant.norm(dim=1, keepdim=True) / (3**0.5 * illuminant.clamp_min(1e-6))
            image = (image * gains).clamp(0.0, 1.0)
        x = (image - self.mean) / self.std
        logits = tta_logits(self.net, x, self.tta).float()
        probs = (logits / self.temperature).softmax(-1)
        p = (probs @ self.malignant).clamp(1e-7, 1 - 1e-7)  # lesion.stats.calibration.platt_scale, in float32
        return probs, torch.sigmoid(self.platt[0] * (p.log() - (-p).log1p()) + self.platt[1])


def metadata(model: LesionClassifier, ckpt_path: str | Path = "") -> dict[str, str]:
    """What an app needs to use the file correctly, as string key/values (ONNX metadata_props)."""
    cfg = model.data_config
    # The run's own eval transforms decide: CLAHE is preprocessing only when it is fixed (clahe_p = 1).
    settings = eval_transforms(model).preprocess_settings()
    clahe = settings["clahe"]
    values = {
        "input": "image: float32 RGB in [0, 1], shape [N, 3, H, W]; normalisation is inside the graph",
        "input_size": json.dumps(cfg["input_size"]),
        "resize": f"resize of the whole photo to H x W (no crop): area averaging when shrinking (OpenCV INTER_AREA), "
        f"{cfg['interpolation']} when enlarging",
        "clahe": json.dumps({"clip_limit": clahe[0], "tile_grid": clahe[1]} if clahe else None),
        "color_constancy": json.dumps(
            {"method": "shades_of_gray", "power": settings["color_constancy"], "where": "inside the graph"}
            if settings.get("color_constancy")
            else None
        ),
        "mean": json.dumps(cfg["mean"]),
        "std": json.dumps(cfg["std"]),
        "outputs": "probs: calibrated class probabilities [N, C]; p_malignant: sigmoid(a logit(s) + b) of their "
        "malignant sum s [N] (a, b: platt)",
        "class_names": json.dumps(list(model.hparams.class_names)),
        "malignant_classes": json.dumps(list(model.hparams.malignant)),
        "temperature": repr(float(model.deployment.temperature)),
        "platt": json.dumps([float(v) for v in model.deployment.platt]),
        "threshold": repr(float(model.deployment.threshold)),
        "calibrated": json.dumps(bool(model.deployment.calibrated)),
        "decision": "refer when p_malignant > threshold",
        "backbone": json.dumps(dict(model.hparams.backbone)),
        "checkpoint": str(ckpt_path),
        "disclaimer": "Not a diagnosis: a research model's estimate from one photo.",
    }
    return values


def example_input(model: LesionClassifier, batch: int = 2) -> torch.Tensor:
    size = model.data_config["input_size"]
    return torch.rand(batch, *size)


def export_onnx(model: LesionClassifier, path: Path, ckpt_path: str | Path = "", opset: int = 18) -> Path:
    """ONNX with a dynamic batch axis and `metadata` in metadata_props; one file (no external data)."""
    import onnx

    net = ScreeningNet(model.eval()).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        torch.onnx.export(
            net,
            (example_input(model),),
            str(path),
            input_names=["image"],
            output_names=["probs", "p_malignant"],
            dynamic_shapes={"image": {0: batch}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = onnx.load(str(path))
    for key, value in metadata(model, ckpt_path).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


def export_torchscript(model: LesionClassifier, path: Path, ckpt_path: str | Path = "") -> Path:
    """A traced TorchScript module; the metadata travels as the extra file `metadata.json`."""
    net = ScreeningNet(model.eval()).eval()
    with torch.no_grad():
        traced = torch.jit.trace(net, example_input(model))
    extra = {"metadata.json": json.dumps(metadata(model, ckpt_path), indent=2)}
    torch.jit.save(traced, str(path), _extra_files=extra)
    return path


def export(model: LesionClassifier, fmt: str, path: Path, ckpt_path: str | Path = "") -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        return export_onnx(model, path, ckpt_path)
    return export_torchscript(model, path, ckpt_path)
