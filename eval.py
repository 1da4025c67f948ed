"""python eval.py ckpt_path=outputs/.../checkpoints/best.ckpt (or [a.ckpt,b.ckpt]: an ensemble) [data=...]"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from lesion.data import build_datamodule
from lesion.models.loading import load_model
from lesion.runs import dashboard
from lesion.runs.allocator import retain_freed_memory
from lesion.runs.config import to_plain
from lesion.runs.trainer import lightning_args
from lesion.screening.after_fit import after_fit, split_report
from lesion.screening.checkpoints import (
    checkpoints_compared,
    in_domain_figures,
    in_domain_metrics,
    save_calibrated,
    save_site,
)
from lesion.screening.evaluation import (
    per_class_table,
    refuse_leaks,
    training_splits,
)
from lesion.screening.failures import Reports
from lesion.screening.predictions import predict, write_predictions
from lesion.screening.recalibration import recalibrate, recalibration_table
from lesion.screening.reports import (
    LABELS,
    confusion_table,
    domain_shift_table,
    markdown_table,
    plot_confusion,
    plot_pr,
    plot_reliability,
    plot_robustness,
    plot_roc,
)
from lesion.screening.robustness import robustness_table
from lesion.stats.fairness import fairness_markdown, fairness_table, group_columns, skin_tone_frame
from lesion.stats.subgroups import subgroup_table

log = logging.getLogger("lesion")


def evaluate(config: dict) -> dict:
    """Test-split screening report: metrics at 0.5 and at the operating point with CIs, calibration, confusion
    tables, ROC/PR/reliability plots, fairness and robustness; every artifact lands in the run dir."""
    retain_freed_memory(config["allocator"]["retain_mb"])
    ckpt = config["ckpt_path"]
    model = load_model(ckpt, config.get("tta"), config.get("posthoc_adjustment"))
    out = Path(config["paths"]["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    datamodule, binary = _datamodule(config, model, out)
    external = getattr(datamodule, "external", False)
    if config["recalibrate"]["enabled"] and not external:
        raise ValueError("recalibrate.enabled=true refits on a site's own labelled set: add data.external=true")
    trainer = L.Trainer(**lightning_args(config["trainer"]), logger=False, default_root_dir=str(out))
    test = predict(model, datamodule.test_dataloader(), trainer, binary_labels=binary)
    declared = datamodule.declared_groups
    if bool(model.deployment.calibrated):
        write_predictions(out / "predictions.csv", "test", test, model, append=False)  # before any report
        report = split_report(model, test, datamodule.frames["test"], "test", config, declared)
    else:  # an operating point fitted here (never on external data: _refuse_external says why), stored in a copy
        _refuse_external(datamodule, ckpt)
        log.warning("%s has no stored operating point: choosing it on the calibration split or val now", ckpt)
        settings = config | {"checkpoints_compared": checkpoints_compared(ckpt), "predictions": out / "predictions.csv"}
        report, _ = after_fit(model, datamodule, trainer, settings, lambda: test, store=_store(model, config, out))
    report |= {
        f"operating_point/{k}": v for k, v in (model.deployment.operating_point or {}).items() if k != "threshold"
    }
    p = test.p_malignant(model)
    failed = Reports(out)  # each report below: one that fails is named, the others and every file are kept
    with failed.report("subgroups"):
        if subgroup_table(report):
            (out / "subgroups.md").write_text("# Test figures per source and modality\n\n" + subgroup_table(report))
    with failed.report("plots"):
        _plots(model, test, p, report, out, _name(ckpt), binary)
    if external:
        with failed.report("domain shift"):
            report |= _domain_shift(model, test, ckpt, report, config, out)
    if config["fairness"]["enabled"]:
        with failed.report("fairness"):
            _fairness(datamodule, test, p, report["threshold"], config["fairness"], out)
    if config["robustness"]["enabled"]:
        with failed.report("robustness"):
            rob = config["robustness"]
            table = robustness_table(model, datamodule, trainer, test, rob["severities"], rob["max_images"])
            table.to_csv(out / "robustness.csv", index=False)
            (out / "robustness.md").write_text(
                "# Robustness to phone-camera conditions\n\n" + markdown_table(table) + "\n"
            )
            plot_robustness(table, out / "robustness.png")
    data = dict(config.get("data") or model.hparams.data or {})  # what was evaluated, named for the model card
    written = {"data": {"name": data.get("name"), "root": data.get("root"), "external": bool(external)}}
    written |= {"report_errors": failed.errors} if failed.errors else {}
    (out / "metrics.json").write_text(json.dumps(report | {"checkpoint": ckpt} | written, indent=2, sort_keys=True))
    loggers = [instantiate(block) for block in (config.get("logger") or {}).values()]
    dashboard.log_eval_artifacts(loggers, out, report)
    dashboard.finish(loggers)
    log.info(_summary(report))
    log.info("evaluation written to %s", out)
    failed.raise_if_any()
    return report


def _datamodule(config: dict, model, out: Path):
    """The data to evaluate, set up for test, with the checkpoint's own preprocessing (and, when no data is given, its
    training run's own split); refuses test images the model was trained or tuned on. Also: whether benign/malignant
    labels score a multiclass model through its P(malignant)."""
    splits = training_splits(model, config["ckpt_path"])
    data = dict(config.get("data") or model.hparams.data)
    # The checkpoint's own preprocessing (CLAHE, colour constancy) whatever data is evaluated: it is part of the model.
    data["transforms"] = dict(model.deployment.transforms or data.get("transforms") or {})
    if not config.get("data") and splits:  # the training run's own split, whatever the data config would carve now
        data["split_file"] = str(out / "splits.csv")
        splits[0].to_csv(data["split_file"], index=False)
    datamodule = build_datamodule(data, model.data_config)
    binary = _scored_through_p_malignant(datamodule, list(model.hparams.class_names))
    datamodule.setup("test")
    refuse_leaks(datamodule.frames["test"], splits, config["ckpt_path"], own_split=not config.get("data"))
    return datamodule, binary


def _refuse_external(datamodule, ckpt: str | list) -> None:
    if getattr(datamodule, "external", False):
        raise ValueError(
            f"{_name(ckpt)} has no operating point and data.external=true has no val split to fit one on: evaluate it "
            "on its own data first (python eval.py ckpt_path=...), then pass the calibrated checkpoint it writes"
        )


def _store(model, config: dict, out: Path):
    """after_fit's store: a calibrated copy (or ensemble.ckpt, or the checkpoint itself with save_operating_point),
    written once, with the test figures a later external evaluation compares against."""

    def store(report: dict) -> dict:
        in_domain = in_domain_figures(report, out / "metrics.json")
        path = save_calibrated(model, config["ckpt_path"], out, config["save_operating_point"], in_domain)
        log.info("operating point stored in %s: pass it to predict/app/export", path)
        return {"calibrated_checkpoint": str(path)}

    return store


def _plots(model, test, p, report: dict, out: Path, name: str, binary: bool) -> None:
    """Confusion tables and plots at 0.5 and at the operating point, ROC, PR, reliability (p: calibrated
    P(malignant) of `test`), and the per-class table."""
    names = list(model.hparams.class_names)
    # Two classes: name the axes by them (apple/orange); more: the benign/malignant grouping.
    axes = tuple(sorted(names, key=lambda c: c in model.hparams.malignant)) if len(names) == 2 else LABELS
    tables = []
    for prefix, threshold in (("test", 0.5), ("test_op", report["threshold"])):
        counts = {k: int(report[f"{prefix}/{k}"]) for k in ("tp", "fn", "fp", "tn")}
        tables.append(f"## Threshold {threshold:.4f}\n\n{confusion_table(counts, axes)}")
        plot_confusion(counts, out / f"confusion_matrix{'_op' if prefix == 'test_op' else ''}.png", axes)
    (out / "confusion_matrix.md").write_text(f"# Confusion matrix ({name})\n\n" + "\n".join(tables))
    plot_roc(p, test.y_malignant, out / "roc.png", report["test/auroc"])
    plot_pr(p, test.y_malignant, out / "pr.png")
    before = test.p_malignant(model, calibrated=False)
    plot_reliability({"uncalibrated": before, "calibrated": p}, test.y_malignant, out / "reliability.png")
    if len(names) > 2 and not binary:
        (out / "per_class.md").write_text(markdown_table(per_class_table(test, names, model)))
    elif len(names) > 2:
        log.info("benign/malignant labels only: no per-class table for the %d-class checkpoint", len(names))


def _domain_shift(model, test, ckpt: str | list, report: dict, config: dict, out: Path) -> dict:
    """External data: the in-domain vs external table and, when asked, the site's local recalibration."""
    in_domain = in_domain_metrics(ckpt)
    (out / "domain_shift.md").write_text(domain_shift_table(in_domain, report))
    extra = {f"in_domain/{k}": v for k, v in in_domain.items()}
    if config["recalibrate"]["enabled"]:
        site, refitted = recalibrate(model, test, config["recalibrate"], config["bootstrap"]["resamples"])
        (out / "recalibration.md").write_text(recalibration_table(in_domain, refitted))
        extra |= refitted | {"site_checkpoint": str(save_site(site, ckpt, out))}
        log.info("site-specific checkpoint: %s (recalibration.md)", extra["site_checkpoint"])
    return extra


def _fairness(datamodule, test, p, threshold: float, fairness: dict, out: Path) -> None:
    groups = group_columns(skin_tone_frame(datamodule, test.image_ids))
    table, gaps = fairness_table(test.y_malignant.numpy(), p.numpy(), groups, threshold, fairness["min_positives"])
    table.to_csv(out / "fairness.csv", index=False)
    (out / "fairness.md").write_text(fairness_markdown(table, gaps, threshold, fairness["min_positives"]))


def _scored_through_p_malignant(datamodule, names: list[str]) -> bool:
    """True when benign/malignant data evaluates a multiclass checkpoint (through its P(malignant)); an error for
    any other class mismatch."""
    if list(datamodule.classes) == names:
        return False
    if tuple(datamodule.classes) == ("benign", "malignant") and tuple(datamodule.malignant) == ("malignant",):
        return True
    raise ValueError(
        f"data classes {list(datamodule.classes)} differ from the checkpoint's {names}: use data with the same "
        "classes, or a benign/malignant set (folder: benign/ and malignant/ class folders, data.task=binary)"
    )


def _name(ckpt: str | list) -> str:
    return ", ".join(Path(c).name for c in ckpt) if isinstance(ckpt, list) else Path(ckpt).name


def _summary(report: dict) -> str:
    ci = report.get("test_op/auroc_ci", [float("nan")] * 2)
    return (
        f"AUROC {report['test/auroc']:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f}), pAUC80 {report['test/pauc80']:.3f}; "
        f"at threshold {report['threshold']:.3f}: sensitivity {report['test_op/recall']:.3f}, "
        f"specificity {report['test_op/specificity']:.3f}; at 0.5: sensitivity {report['test/recall']:.3f}, "
        f"specificity {report['test/specificity']:.3f}; ECE {report['test_calibration/ece_before']:.3f} -> "
        f"{report['test_calibration/ece_after']:.3f} (T = {report['temperature']:.2f}, "
        f"Platt a = {report['platt_a']:.2f}, b = {report['platt_b']:.2f})"
    )


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(to_plain(cfg))


if __name__ == "__main__":
    main()
