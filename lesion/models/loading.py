"""Loading a trained checkpoint (or assembling an ensemble of them) with its evaluation transforms: the one door every
entry point goes through."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lesion.data.transforms import LesionTransforms
from lesion.models.ensemble import ENSEMBLE_KEY, LesionEnsemble
from lesion.models.module import LesionClassifier
from lesion.models.tta import TTA_VIEWS, tta_mode

log = logging.getLogger(__name__)


def load_model(ckpt_path: str | Path | list, tta: bool | str | None = None, posthoc: float | str | None = None):
    """A checkpoint (or an ensemble: a list of checkpoints, or the ensemble checkpoint eval.py wrote) in eval mode on
    the CPU, with a clear error for a wrong path. tta, posthoc: the test-time augmentation (model.tta) and post-hoc
    adjustment of an ensemble assembled from a list (None: as its members); a checkpoint keeps those its operating
    point was fitted with, unless tta or posthoc is given: then it is an ensemble of one (the trained network under
    another TTA, say), whose operating point is fitted anew."""
    assembled = tta is not None or posthoc is not None  # an ensemble, even of one checkpoint
    if isinstance(ckpt_path, list | tuple) or assembled:
        paths = list(ckpt_path) if isinstance(ckpt_path, list | tuple) else [ckpt_path]
        if len(paths) > 1 or assembled:
            return assemble(paths, tta, posthoc)
        return load_model(paths[0])
    ckpt = Path(ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt} does not exist; pass a .ckpt from outputs/.../checkpoints/")
    # weights_only: a checkpoint from elsewhere cannot run pickled code; ours hold plain values only.
    hparams = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {})
    cls = LesionEnsemble if ENSEMBLE_KEY in hparams else LesionClassifier
    return cls.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()


def load_calibrated(ckpt_path: str | Path | list, allow_uncalibrated: bool = False) -> LesionClassifier:
    """`load_model` for the entry points that make decisions (predict.py, app.py, export.py): a model without a fitted
    temperature and threshold is refused (its decisions would use an arbitrary 0.5), or allowed with a warning."""
    model = load_model(ckpt_path)
    if not bool(model.deployment.calibrated):
        how = (
            f"ckpt_path={ckpt_path} has no fitted temperature and threshold (a DDP or fast_dev_run run, an old "
            "checkpoint, or a list of checkpoints): run `python eval.py ckpt_path=...` on it first, which fits them on "
            "the val split and writes a calibrated checkpoint (<name>.calibrated.ckpt beside it; ensemble.ckpt in its "
            "run dir for a list), then pass that file"
        )
        if not allow_uncalibrated:
            raise ValueError(how + "; allow_uncalibrated=true uses it as it is")
        log.warning("%s; allow_uncalibrated=true: using temperature 1 and threshold 0.5", how)
    return model


def eval_transforms(model: LesionClassifier) -> LesionTransforms:
    """The evaluation-time transforms of the run that trained `model` (resize, fixed CLAHE, normalisation)."""
    return model.deployment.eval_transforms(model.data_config)


def assemble(
    paths: list[str | Path], tta: bool | str | None = None, posthoc_adjustment: float | str | None = None
) -> LesionEnsemble:
    """Assemble trained checkpoints (uncalibrated: fit its operating point on val, e.g. with eval.py).

    tta: None: the members' TTA (the one with more views when they differ). Members must share classes and input
    pipeline."""
    models = [load_model(p) for p in paths]
    if any(isinstance(m, LesionEnsemble) for m in models):
        raise ValueError("ckpt_path lists an ensemble checkpoint: list its members' checkpoints instead")
    first = models[0]
    reference = _pipeline(first)
    for path, model in zip(paths[1:], models[1:]):
        differs = [k for k, v in _pipeline(model).items() if v != reference[k]]
        if differs:
            raise ValueError(
                f"{path} differs from {paths[0]} in {differs}: an ensemble's members must share classes, "
                "input size and preprocessing, so that one input pipeline feeds them all"
            )
    if tta is None:
        modes = {tta_mode(m.hparams.get("tta", False)) for m in models}
        tta = next((mode for mode in reversed(TTA_VIEWS) if mode in modes), False)
    ensemble = LesionEnsemble([dict(m.hparams) for m in models], tta=tta, posthoc_adjustment=posthoc_adjustment)
    for member, model in zip(ensemble.members, models):
        member.load_state_dict(model.state_dict())
    ensemble.log_prior.copy_(torch.stack([m.log_prior for m in models]).mean(0))
    ensemble.member_paths = [str(p) for p in paths]
    ensemble.deployment.split_ids = [m.deployment.split_ids for m in models]
    ensemble.deployment.split_groups = [m.deployment.split_groups for m in models]
    return ensemble.eval()


def _pipeline(model: LesionClassifier) -> dict:
    """What must match across members: classes, the malignant grouping, and the evaluation input pipeline."""
    return {
        "class_names": list(model.hparams.class_names),
        "malignant": list(model.hparams.malignant),
        "input_size": list(model.data_config["input_size"]),
        "mean/std": [list(model.data_config["mean"]), list(model.data_config["std"])],
        "interpolation": model.data_config.get("interpolation"),
        "preprocessing": eval_transforms(model).preprocess_settings(),
    }
