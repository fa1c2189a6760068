"""The plan of `benchmarks/gpu_run.sh`: one device call of at most CALL_S seconds.

A lent GPU gives about 15 minutes of device time, start-up included, and one call of
at most ~8 minutes fits in it with room for nothing else; so the whole run is planned
for one call. Each phase has a hard allowance; the DAG's stages are estimated from the
last run on a card (benchmarks/results/gpu_pipeline-NVIDIA_H200.json: throughput per
stage, start-up included) scaled to the profile's work (gpu_neu.yaml), and stages
without a recorded figure get the stated allowance.

    python3 benchmarks/gpu_plan.py           # the plan as a table; exit 1 if it does not fit
    python3 benchmarks/gpu_plan.py --shell   # the allowances as shell assignments
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
LAST_RUN = HERE / "results" / "gpu_pipeline-NVIDIA_H200.json"
PROFILE = HERE / "gpu_neu.yaml"
CALL_S = 480  # one device call

SETUP_S = 30  # wheels (skipped when already installed), env.txt, the data check
ROWS_S = 200  # the SD1.5-architecture A/B rows (gpu_diffusion.py), all of them
ROW_LIMIT_S = 45  # any one row, a compile included
DAG_S = CALL_S - SETUP_S - ROWS_S - 10  # what is left, less a margin for the copy-back

# Stages the last card run did not reach: allowances, not measurements.
ALLOWANCE_S = {"sweep": 30, "generate": 20, "gate": 25, "train": 30, "report": 10}
N_CLASSES = 6  # NEU-DET


def work_units(stage: str, p: dict) -> float | None:
    """The profile's work for the stages the last run measured, in its units."""
    if stage in ("ingest", "preprocess"):
        return None  # the same data every run: its wall time stands
    if stage == "base":
        return (p["base"]["vae_steps"] + p["base"]["unet_steps"]) * p["base"]["batch_size"]
    if stage == "finetune":
        f = p["finetune"]
        return N_CLASSES * (f["ti"]["steps"] + f["lora"]["steps"]) * f["batch_size"]
    return None


def dag_estimate() -> list[tuple[str, float, str]]:
    """(stage, seconds, where the figure comes from) for the DAG through report."""
    profile = yaml.safe_load(PROFILE.read_text())
    last = json.loads(LAST_RUN.read_text())["stages"]
    rows = []
    # gpu_pipeline.DAG's stages, written out: this runs before the GPU venv exists
    # (system python, no defectgen to import); tests/e2e/test_benchmarks.py checks them
    for stage in ("ingest", "preprocess", "base", "finetune", *ALLOWANCE_S):
        recorded = last.get(stage, {})
        if recorded.get("per_s"):
            units = work_units(stage, profile)
            if units is None:
                rows.append((stage, recorded["wall_s"], "last run's wall time"))
            else:
                rows.append(
                    (stage, units / recorded["per_s"],
                     f"{units:.0f} {recorded['unit']} at the last run's {recorded['per_s']:.0f}/s")
                )  # fmt: skip
        else:
            rows.append((stage, ALLOWANCE_S[stage], "allowance (no card figure yet)"))
    return rows


def main(argv: list[str]) -> int:
    if "--shell" in argv:
        print(f"SETUP_S={SETUP_S} ROWS_S={ROWS_S} ROW_LIMIT_S={ROW_LIMIT_S} DAG_S={DAG_S}")
        return 0
    dag = dag_estimate()
    dag_total = sum(s for _, s, _ in dag)
    print(f"gpu_run.sh plan: one call of at most {CALL_S} s (device tool timeout_s {CALL_S})\n")
    print(f"  {SETUP_S:4d} s  setup: wheels into /tmp/defectgen-site (skipped if there), env")
    print(f"  {ROWS_S:4d} s  A/B rows (gpu_diffusion.py), each under a {ROW_LIMIT_S} s limit")
    print(f"  {DAG_S:4d} s  the NEU-DET DAG through report (gpu_pipeline.py), estimated:")
    for stage, seconds, source in dag:
        print(f"         {seconds:6.1f} s  {stage:<10} {source}")
    print(f"         {dag_total:6.1f} s  estimated DAG total")
    total = SETUP_S + ROWS_S + DAG_S
    fits = total <= CALL_S and dag_total <= DAG_S
    print(f"\n  {total:4d} s  planned of {CALL_S}: {'fits' if fits else 'DOES NOT FIT'}")
    return 0 if fits else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
