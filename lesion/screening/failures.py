"""An evaluation's reports built one by one: one that fails is named and logged, the others are still built and every
file is kept, and the run then ends with an error that names what failed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


class Reports:
    """`with reports.report("fairness"): ...` around each report; `raise_if_any()` once all were tried."""

    def __init__(self, out: Path):
        self.out, self.errors = out, {}

    @contextmanager
    def report(self, name: str) -> Iterator[None]:
        try:
            yield
        except Exception as error:  # noqa: BLE001  (any failure of one report must not cost the others)
            log.exception("the %s report failed; the other reports and predictions.csv are kept in %s", name, self.out)
            self.errors[name] = f"{type(error).__name__}: {error}"

    def raise_if_any(self) -> None:
        if self.errors:
            failed = "; ".join(f"{name} ({error})" for name, error in self.errors.items())
            raise RuntimeError(
                f"{len(self.errors)} report(s) failed: {failed}. The predictions (predictions.csv), metrics.json and "
                f"every other report are in {self.out}; the traceback of each failure is in the log above"
            )
