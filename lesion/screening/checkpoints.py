"""What evaluation writes into checkpoint files and reads back: the operating point (in place, in a calibrated copy, or
a site's recalibrated copy), and the in-domain test figures an external evaluation is compared against."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from lesion.models.deployment import BUFFERS
from lesion.models.ensemble import LesionEnsemble
from lesion.models.module import LesionClassifier
from lesion.screening.reports import DOMAIN_KEYS


def store_operating_point(ckpt_path: str, model: LesionClassifier, extra: dict | None = None) -> None:
    """Write the model's temperature, Platt map, threshold and calibrated flag (and `extra` top-level entries) into an
    existing checkpoint file."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    for name in BUFFERS:
        state.pop(name, None)  # a checkpoint written before Deployment held these on the module
        state[f"deployment.{name}"] = getattr(model.deployment, name).detach().cpu()
    state["posthoc_tau"] = model.posthoc_tau.detach().cpu()
    ckpt["operating_point"] = dict(model.deployment.operating_point or {})
    ckpt["quality"] = model.deployment.quality
    torch.save(ckpt | (extra or {}), ckpt_path)


def save_calibrated(model, ckpt: str | list, out: Path, in_place: bool, in_domain: dict | None = None) -> Path:
    """Keep the operating point just fitted: an ensemble is written to the run dir as ensemble.ckpt; a checkpoint
    gets a calibrated copy beside it (`<name>.calibrated.ckpt`), or is updated in place when `in_place`. `in_domain`
    (`in_domain_figures`): the test figures kept with it, for a later external evaluation (`in_domain_metrics`)."""

    def beside(source: Path) -> Path:
        return source if in_place else source.with_name(f"{source.stem}.calibrated.ckpt")

    extra = {"in_domain_test": in_domain} if in_domain else None
    return _save_operating_point(model, ckpt, out / "ensemble.ckpt", beside, extra)


def save_site(site, ckpt: str | list, out: Path) -> Path:
    """The locally recalibrated copy, in the eval run dir: ensemble.site.ckpt or <name>.site.ckpt."""
    return _save_operating_point(
        site, ckpt, out / "ensemble.site.ckpt", lambda source: out / f"{source.stem}.site.ckpt"
    )


def _save_operating_point(model, ckpt: str | list, ensemble_path: Path, target_of, extra: dict | None = None) -> Path:
    """An ensemble saved whole to `ensemble_path`; a checkpoint copied to `target_of(source)` (or kept, when that is
    the source itself) with the model's operating point (and `extra`) written into it."""
    if isinstance(model, LesionEnsemble):
        return model.save(ensemble_path, extra)
    source = Path(ckpt[0] if isinstance(ckpt, list) else ckpt)
    target = target_of(source)
    if target != source:
        shutil.copyfile(source, target)
    store_operating_point(str(target), model, extra)
    return target


def in_domain_figures(report: dict, source: Path) -> dict:
    """The in-domain test figures of an eval.py report, as `save_calibrated` keeps them in the calibrated checkpoint
    (its run has no metrics.json of them when train.py could not calibrate) for a later external evaluation's
    in-domain vs external table."""
    return {k: report[k] for k in DOMAIN_KEYS if k in report} | {"source": str(source)}


def in_domain_metrics(ckpt: str | list) -> dict:
    """The test figures of the checkpoint's own run (stored in it by the eval.py run that calibrated it, or train.py's
    metrics.json beside checkpoints/, or that of the eval.py run dir holding an ensemble.ckpt), for the in-domain vs
    external table."""
    if not isinstance(ckpt, list):
        stored = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("in_domain_test")
        if stored:
            return dict(stored)
    first = Path(ckpt if not isinstance(ckpt, list) else ckpt[0]).resolve()
    # An ensemble.ckpt sits in the eval.py run dir that calibrated it; a checkpoint in its run's checkpoints/.
    candidates = [first.parent / "metrics.json", first.parent.parent / "metrics.json"]
    for path in candidates:
        if path.is_file():
            values = json.loads(path.read_text())
            if "test/auroc" in values:
                return {k: values[k] for k in DOMAIN_KEYS if k in values} | {"source": str(path)}
    return {}


TRAINING_STATE = ("optimizer_states", "lr_schedulers", "loops", "callbacks")  # a site model resumes no training


def save_adapted(model: LesionClassifier, source: str | Path, path: Path, extra: dict) -> Path:
    """A site model (weights changed by adaptation) as a checkpoint that `load_model` reads: the source checkpoint's
    hyperparameters, the site model's state dict, operating point and quality gate, and `extra` entries (what the
    adaptation did, its local figures, the splits it used)."""
    ckpt = torch.load(source, map_location="cpu", weights_only=True)
    ckpt = {k: v for k, v in ckpt.items() if k not in TRAINING_STATE}
    ckpt["state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    ckpt["operating_point"] = dict(model.deployment.operating_point or {})
    ckpt["quality"] = model.deployment.quality
    torch.save(ckpt | extra, path)
    return path


def checkpoints_compared(ckpt: str | list) -> int:
    """How many validated checkpoints the run behind `ckpt` chose it among (its EpochHistory, which Lightning keeps in
    the file): the selection the lower bound is corrected for when val certifies its threshold. A list (an ensemble):
    the members' choices together (their product: every combination could have been the one kept). 1 when the file
    records no history."""
    if isinstance(ckpt, list):
        return math.prod(checkpoints_compared(c) for c in ckpt)
    states = torch.load(ckpt, map_location="cpu", weights_only=True).get("callbacks") or {}
    rows = next((state.get("rows", []) for key, state in states.items() if key.startswith("EpochHistory")), [])
    return max(1, sum("score" in row for row in rows))
