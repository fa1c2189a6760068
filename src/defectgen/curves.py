"""Loss curves of a stage as CSV files (dvc plots, MLflow step metrics)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


class Curves:
    """Loss curves of a stage: one CSV per series (`<series>.csv`, columns step, loss) in
    a folder, which dvc.yaml declares as plots and the runner logs to MLflow."""

    def __init__(self) -> None:
        self.series: dict[str, list[float]] = {}

    def logger(self, series: str):
        values = self.series.setdefault(series, [])
        return lambda step, value: values.append(value)

    def write(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for series, values in self.series.items():
            lines = ["step,loss"] + [f"{i},{v:.6g}" for i, v in enumerate(values)]
            (folder / f"{series}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def extend_from(self, folder: Path) -> None:
        """Add the curves saved in `folder` (a resumed unit's)."""
        for path in sorted(Path(folder).glob("*.csv")):
            with path.open(encoding="utf-8") as fh:
                self.series[path.stem] = [float(row["loss"]) for row in csv.DictReader(fh)]

    def summary(self, series: str) -> dict[str, float]:
        """Steps, mean of the first and last tenth, and minimum of one series."""
        values = self.series.get(series, [])
        if not values:
            return {}
        k = max(1, len(values) // 10)
        return {
            "steps": len(values),
            "first_mean": float(np.mean(values[:k])),
            "last_mean": float(np.mean(values[-k:])),
            "min": float(np.min(values)),
        }
