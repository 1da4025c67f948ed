"""Does the test suite bite? Each mutation is one deliberate breakage (a line or two replaced); this script applies
them one at a time to a scratch copy of the working tree, runs the tests that should catch it, and prints which the
suite caught. Every listed breakage must be caught: exit 1 otherwise.

    python bench/mutations.py                 # every mutation (about 5 minutes on 2 cores)
    python bench/mutations.py --only seeds    # the mutations whose name contains a word
    python bench/mutations.py --check         # only: is every mutation's text still in its file?
    python bench/mutations.py --sample 3 --seed 7   # 3 of them drawn at random (CI runs a sample each time)

A mutation whose text is no longer in its file is an error: update the list with the code it guards.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


RECIPE_LEVERS = "tests/test_recipe.py::test_recipe_levers_reach_the_loss_through_train_py"
LEAKS = "tests/test_screening.py::test_the_leak_guard_refuses_another_image_of_a_training_lesion"
BOOTSTRAP = "tests/test_screening.py::test_bootstrap_ci_resamples_within_each_class_at_the_level_asked"
SCORES = "tests/test_train.py::test_scores_apply_the_stored_temperature_then_the_platt_map"
CONFIDENCE = "tests/test_screening.py::test_the_lower_bound_is_certified_at_the_confidence_the_config_asks"
PATH_SOURCES = (
    "tests/test_use.py::test_a_csv_whose_source_values_are_paths_is_evaluated_and_reports_only_real_groupings"
)

MUTATIONS = (
    Mutation(
        "unwire mixup",
        "lesion/models/module.py",
        'if split == "train" and self.mixup is not None and len(labels) % 2 == 0:',
        "if False:",
        (RECIPE_LEVERS,),
    ),
    Mutation(
        "unwire label smoothing",
        "lesion/models/module.py",
        'elif split == "train" and self.hparams.label_smoothing:',
        "elif False:",
        (RECIPE_LEVERS,),
    ),
    Mutation(
        "drop logit adjustment from the loss",
        "lesion/models/module.py",
        "logits = logits.float() + self.hparams.logit_adjustment * self.log_prior",
        "logits = logits.float()",
        (RECIPE_LEVERS,),
    ),
    Mutation(
        "ignore data.train_sizes",
        "lesion/data/datamodule.py",
        "sizes = self.train_sizes if train else ()",
        "sizes = ()",
        (RECIPE_LEVERS,),
    ),
    Mutation(
        "unwire the activation cache from train.py",
        "train.py",
        'if config["activation_cache"]["enabled"]:',
        "if False:",
        ("tests/test_recipe.py::test_activation_cache_trains_through_train_py",),
    ),
    Mutation(
        "drop the temperature",
        "lesion/models/module.py",
        "logits = logits / self.deployment.temperature.to(logits.device)",
        "logits = logits",
        (SCORES,),
    ),
    Mutation(
        "Platt map rounded back to float32",
        "lesion/stats/calibration.py",
        "    return torch.sigmoid(a * z + b)\n",
        "    return torch.sigmoid(a * z + b).to(p.dtype)\n",
        (
            SCORES,
            "tests/test_screening.py::test_platt_recovers_the_map_that_generated_the_labels_and_keeps_the_ranking",
        ),
    ),
    Mutation(
        "flip the Screener's threshold comparison",
        "lesion/serving/inference.py",
        "elevated = p > self.threshold",
        "elevated = p < self.threshold",
        ("tests/test_ensemble.py::test_every_consumer_gets_the_ensemble_decision",),
    ),
    Mutation(
        "flip predict_step's threshold comparison",
        "lesion/models/module.py",
        '"malignant": p_malignant > self.deployment.threshold,',
        '"malignant": p_malignant < self.deployment.threshold,',
        ("tests/test_train.py::test_predict_step_refers_the_scores_above_the_stored_threshold",),
    ),
    Mutation(
        "calibrate on val when a calibration split was carved",
        "lesion/screening/after_fit.py",
        'return (val if split == "val" else predict(model, datamodule.calibration_dataloader(), trainer)), split',
        "return val, split",
        ("tests/test_screening.py::test_a_calibration_split_alone_sets_the_threshold_and_the_card_says_so",),
    ),
    Mutation(
        "the leak guard forgets the calibration split",
        "lesion/screening/evaluation.py",
        'seen = table[table["split"].isin(["train", "val", "calibration"])]',
        'seen = table[table["split"].isin(["train", "val"])]',
        (LEAKS,),
    ),
    Mutation(
        "skip the leak check",
        "lesion/screening/evaluation.py",
        "    if not hit.any():\n        return\n",
        "    return\n",
        (LEAKS,),
    ),
    Mutation(
        "leak guard by image id only",
        "lesion/screening/evaluation.py",
        'for column in [c for c in table.columns if c not in ("image_id", "split") and c in test.columns]:',
        "for column in []:",
        (LEAKS,),
    ),
    Mutation(
        "ignore the bootstrap CI level",
        "lesion/stats/operating_point.py",
        "    tail = (1 - level) / 2 * 100\n    return {k:",
        "    tail = 2.5\n    return {k:",
        (BOOTSTRAP,),
    ),
    Mutation(
        "bootstrap resampling not stratified by class",
        "lesion/stats/operating_point.py",
        "        idx = torch.cat(\n            [\n",
        "        idx = torch.randint(len(y), (len(y),), generator=generator)\n        _ = (\n            [\n",
        (BOOTSTRAP,),
    ),
    Mutation(
        "Optuna minimises",
        "conf/hparams_search/optuna.yaml",
        "direction: maximize",
        "direction: minimize",
        ("tests/test_operations.py::test_optuna_search_maximises_the_monitored_score_and_each_trial_returns_its_own",),
    ),
    Mutation(
        "seeds as seed + epoch",
        "lesion/runs/trainer.py",
        "return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])",
        "return seed + epoch",
        (
            "tests/test_operations.py::test_each_epoch_is_reseeded_from_seed_and_epoch_so_neighbouring_seeds_do_not_share_streams",
        ),
    ),
    Mutation(
        "resume unpickles the checkpoint",
        "lesion/runs/trainer.py",
        "weights_only=True)  # plain values: a resumed file runs no code",
        "weights_only=False)",
        ("tests/test_operations.py::test_a_checkpoint_holding_pickled_code_is_refused_on_resume_and_when_calibrating",),
    ),
    Mutation(
        "packaged weights matched by shape only",
        "lesion/models/weights.py",
        "if weight_role(src_key) != weight_role(dst_key):",
        "if False:",
        ("tests/test_backbones.py::test_packaged_weights_are_matched_by_role_not_only_by_shape",),
    ),
    Mutation(
        "HEIF opener registered only when decoding",
        "lesion/data/readers.py",
        "# HEIC a process sees has its declared size checked against max_pixels like every other image.\n"
        "register_heif_opener()\n",
        "# HEIC a process sees has its declared size checked against max_pixels like every other image.\n",
        ("tests/test_datasets.py::test_the_first_heic_a_process_reads_is_held_to_max_pixels",),
    ),
    Mutation(
        "throughput from optimizer steps x batch size",
        "train.py",
        '"train_img_per_s": round(seen.total / seconds, 1),',
        '"train_img_per_s": round(trainer.global_step * datamodule.batch_size / seconds, 1),',
        ("tests/test_train.py::test_throughput_counts_the_images_trained_on_under_gradient_accumulation",),
    ),
    Mutation(
        "download leaves its responses open",
        "lesion/data/download.py",
        "        response,\n        open(part",
        "        open(part",
        ("tests/test_download.py::test_every_http_response_is_closed",),
    ),
    Mutation(
        "site threshold fitted on the fine-tuning part",
        "lesion/serving/adaptation.py",
        "refit_operating_point(adapted, self.predictions(adapted, calibration), target, confidence)",
        "refit_operating_point(adapted, self.predictions(adapted, train), target, confidence)",
        ("tests/test_adaptation.py::test_the_site_threshold_is_certified_on_the_calibration_part_alone",),
    ),
    Mutation(
        "adapt.py's metrics.json names its source as the checkpoint evaluated",
        "adapt.py",
        '"source_checkpoint": str(ckpt), "strategy"',
        '"checkpoint": str(ckpt), "strategy"',
        ("tests/test_adaptation.py::test_the_source_models_card_does_not_take_an_adaptation_run_for_its_test_split",),
    ),
    Mutation(
        "quality gate judges the whole frame",
        "lesion/serving/quality.py",
        'm = image_measures(sized, t.get("region", 1.0))',
        "m = image_measures(sized, 1.0)",
        ("tests/test_use.py::test_the_gate_judges_exposure_where_the_lesion_is_not_over_a_dark_border",),
    ),
    Mutation(
        "class weight dropped from the hard-label loss",
        "lesion/models/module.py",
        "return F.cross_entropy(logits, targets, weight=self.loss_weights)",
        "return F.cross_entropy(logits, targets)",
        ("tests/test_recipe.py::test_the_studys_class_weight_reaches_the_hard_label_loss_through_train_py",),
    ),
    Mutation(
        "lower bound's confidence hard-coded to 0.95",
        "lesion/stats/operating_point.py",
        "bounds = beta.ppf(1 - confidence, np.arange(1, n + 1), n - np.arange(1, n + 1) + 1)",
        "bounds = beta.ppf(1 - 0.95, np.arange(1, n + 1), n - np.arange(1, n + 1) + 1)",
        (CONFIDENCE,),
    ),
    Mutation(
        "after fit certifies at 0.95 whatever the config asks",
        "lesion/screening/after_fit.py",
        "    confidence = certified_confidence(op, compared)\n",
        "    confidence = 0.95\n",
        (CONFIDENCE,),
    ),
    Mutation(
        "app.py does not pass max_queue to the app",
        "app.py",
        'int(config["max_upload_mb"] * 1_000_000), name, config["max_queue"])',
        'int(config["max_upload_mb"] * 1_000_000), name)',
        ("tests/test_use.py::test_app_py_bounds_its_queue_at_the_configured_max_queue",),
    ),
    Mutation(
        "ITA band edge moved from 41 to 45 degrees",
        "lesion/stats/fairness.py",
        '(41, "light")',
        '(45, "light")',
        ("tests/test_screening.py::test_ita_bands_change_exactly_at_the_published_edges",),
    ),
    Mutation(
        "exported graph built from the raw weights, not the EMA",
        "lesion/serving/export.py",
        "self.net = model.eval_net  # the weight EMA when the run kept one",
        "self.net = model.net  # the weight EMA when the run kept one",
        ("tests/test_use.py::test_the_exported_graph_carries_the_ema_weights_the_recipe_evaluates_with",),
    ),
    Mutation(
        "no correction when val both chose the epoch and certifies",
        "lesion/screening/after_fit.py",
        'return 1 - (1 - op["confidence"]) / compared',
        'return op["confidence"]',
        (
            "tests/test_screening.py::test_val_that_chose_the_epoch_certifies_at_the_bonferroni_level_and_a_calibration_split_does_not",
        ),
    ),
    Mutation(
        "the recipe certifies on the val split that chose its epoch",
        "conf/experiment/isic2018_cpu_best.yaml",
        "  calibration_fraction: 0.1\n",
        "  calibration_fraction: 0.0\n",
        (
            "tests/test_configs.py::test_the_recipe_certifies_on_a_calibration_split_it_carves_alone_and_with_phone_photos",
        ),
    ),
    Mutation(
        "data=multi leaves the run's calibration split uncarved",
        "lesion/data/multi.py",
        "                source.datamodule.calibration_fraction = self.calibration_fraction\n",
        "                pass\n",
        (
            "tests/test_multi.py::test_the_runs_calibration_split_is_carved_from_each_source_and_survives_its_split_file",
        ),
    ),
    Mutation(
        "a part's name split on / in report keys",
        "lesion/stats/subgroups.py",
        'prefix = f"{split}_by_{column}/{part_key(value)}/"',
        'prefix = f"{split}_by_{column}/{value}/"',
        (PATH_SOURCES,),
    ),
    Mutation(
        "every column part reported, one image each",
        "lesion/stats/subgroups.py",
        "if column in declared or sizes.min() >= min_images:",
        "if True:",
        (PATH_SOURCES,),
    ),
    Mutation(
        "one failed report ends the evaluation",
        "lesion/screening/failures.py",
        "        except Exception as error:",
        "        except ArithmeticError as error:",
        ("tests/test_use.py::test_a_report_that_fails_is_named_and_every_other_file_is_kept",),
    ),
    Mutation(
        "the model card ignores the provenance its checkpoint records",
        "lesion/serving/provenance.py",
        'provenance = {k: v for k, v in (block.get("provenance") or {}).items() if v}',
        "provenance = {}",
        (
            "tests/test_model_card.py::test_an_isic2018_models_card_names_dermoscopy_and_its_two_sites",
            "tests/test_model_card.py::test_an_isic2024_models_card_says_3d_total_body_crops_and_nothing_of_ham10000",
        ),
    ),
    Mutation(
        "the allocator's settings never reach glibc",
        "lesion/runs/allocator.py",
        "        libc.mallopt(param, ctypes.c_int(value))",
        "        True",
        ("tests/test_speed_options.py::test_a_freed_buffer_is_reused_without_page_faults_when_retained",),
    ),
    Mutation(
        "train.py ignores allocator.retain_mb",
        "train.py",
        '    retain_freed_memory(config["allocator"]["retain_mb"])',
        "",
        ("tests/test_speed_options.py::test_each_entry_point_applies_the_configured_allocator_first",),
    ),
    Mutation(
        "precision auto assumes bf16",
        "lesion/runs/precision.py",
        '        chosen = "bf16-mixed" if supported else "32-true"',
        '        chosen = "bf16-mixed"',
        ("tests/test_speed_options.py::test_auto_precision_is_bf16_only_where_the_cpu_has_bf16",),
    ),
)


def scratch_copy(dest: Path) -> None:
    """The working tree's tracked and untracked-but-not-ignored files (what a fresh clone plus the change holds)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    env = os.environ | {"WANDB_MODE": "offline", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(copy)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
    )
    return done.returncode, (done.stdout + done.stderr).strip().splitlines()[-1] if (done.stdout + done.stderr) else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="words; run the mutations whose name contains one")
    parser.add_argument("--check", action="store_true", help="only check that every mutation's text is in its file")
    parser.add_argument("--sample", type=int, default=0, help="run this many of the chosen mutations, drawn at random")
    parser.add_argument("--seed", type=int, default=None, help="seed of --sample's draw (default: a fresh one)")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or any(w in m.name for w in args.only)]
    stale = [f"{m.name} ({m.path})" for m in MUTATIONS if (ROOT / m.path).read_text().count(m.old) != 1]
    if stale:
        sys.exit(f"mutations whose text is not in their file exactly once: {', '.join(stale)}; update them")
    if args.check:
        print(f"{len(chosen)} mutations, each found once in its file")
        return
    if args.sample and args.sample < len(chosen):
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
        chosen = random.Random(seed).sample(chosen, args.sample)
        print(f"a sample of {len(chosen)} of the {len(MUTATIONS)} mutations (--seed {seed} draws it again)")
    with tempfile.TemporaryDirectory(prefix="lesion-mutations-") as scratch:
        copy = Path(scratch)
        scratch_copy(copy)
        code = f"import lesion; assert lesion.__file__.startswith({str(copy)!r}), lesion.__file__"
        subprocess.run([sys.executable, "-c", code], cwd=copy, env=os.environ | {"PYTHONPATH": str(copy)}, check=True)
        rc, last = run_tests(copy, tuple(dict.fromkeys(t for m in chosen for t in m.tests)))
        if rc != 0:
            sys.exit(f"the tests fail before any mutation ({last}): fix them first")
        print(f"{'mutation':<48} {'caught':>6} {'s':>5}  by")
        missed = []
        for m in chosen:
            path = copy / m.path
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new))
            start = time.perf_counter()
            try:
                rc, last = run_tests(copy, m.tests)
            finally:
                path.write_text(original)
            caught = rc != 0
            missed += [] if caught else [m.name]
            tests = ", ".join(t.split("::")[-1] if "::" in t else t for t in m.tests)
            print(f"{m.name:<48} {'yes' if caught else 'NO':>6} {time.perf_counter() - start:>5.0f}  {tests}")
    print(f"\n{len(chosen) - len(missed)} of {len(chosen)} breakages caught ({1 - len(missed) / len(chosen):.0%})")
    if missed:
        sys.exit(f"not caught: {', '.join(missed)}")


if __name__ == "__main__":
    main()
