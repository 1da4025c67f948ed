"""Grad-CAM (the `grad-cam` package) of P(malignant): which pixels drove the score, as an overlay on the photo."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from torch import nn

from lesion.models.module import LesionClassifier


def last_feature_map(net: nn.Module, input_size: int | tuple[int, int]) -> nn.Module:
    """The module that produces the network's last spatial feature map (at least 2x2): a ResNet's last stage, an
    EfficientNet's last BN-act, the VGG head's last pool. Found by running a probe and watching module outputs, so it
    works for every backbone and cut."""
    seen: list[nn.Module] = []

    def watch(module: nn.Module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[-2:]) >= 2:
            seen.append(module)

    hooks = [m.register_forward_hook(watch) for m in net.modules() if m is not net]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            hw = (input_size, input_size) if isinstance(input_size, int) else input_size
            net(torch.zeros(1, 3, *hw))
    finally:
        net.train(was_training)
        for hook in hooks:
            hook.remove()
    if not seen:
        raise ValueError(f"{type(net).__name__} has no spatial feature map for Grad-CAM")
    return seen[-1]  # containers finish after their children, so this is the outermost last one


class MalignantScore:
    """Grad-CAM target: log P(malignant) = logsumexp of the malignant logits minus logsumexp of all logits (the
    calibration temperature does not move the map's shape, so it is left out)."""

    def __init__(self, malignant_mask: torch.Tensor):
        self.mask = malignant_mask

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(logits[self.mask], -1) - torch.logsumexp(logits, -1)


class GradCam:
    """Overlays of Grad-CAM on P(malignant) for one model, built once (hooks stay on its last feature map)."""

    def __init__(self, model: LesionClassifier):
        self.model = model.eval()
        size = tuple(model.data_config["input_size"][1:])
        self.layer = last_feature_map(model.eval_net, size)
        # The evaluation network on the photo as it is, not the model under its TTA: one forward and backward pass
        # instead of one per view (4 or 8), whose saved activations cost ~0.4 GB at 225x300 for EfficientNet-Lite0
        # (bench/app_memory.py), and one activation map for the hook instead of one per view.
        self.cam = GradCAM(model=model.eval_net, target_layers=[self.layer])
        self.cam.compute_input_gradient = True  # a map even when every layer below is frozen
        self.target = MalignantScore(model.malignant_mask.cpu())

    def heatmap(self, x: torch.Tensor) -> np.ndarray:
        """Normalised CxHxW input -> HxW map in [0, 1] at the input size."""
        with torch.enable_grad():
            return self.cam(input_tensor=x[None], targets=[self.target])[0]

    def overlay(self, image: np.ndarray, x: torch.Tensor) -> np.ndarray:
        """The map over the original photo (RGB uint8, its own size)."""
        mask = cv2.resize(self.heatmap(x), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        return show_cam_on_image(image.astype(np.float32) / 255.0, mask, use_rgb=True, image_weight=0.6)
