"""What a stage process pays before it does any work: its imports.

`dvc repro`, the KFP pods and the end-to-end tests start one process per stage, so each
stage's import time is paid once per stage run (the demo: 15; `make test`: about 80).
For every stage module, in a fresh interpreter each, this records the wall time of
`import defectgen.stages.<module>`, how many modules that loads, and whether torch,
diffusers and mlflow are among them; plus the CLI and the MLflow tracking module (every
tracked stage imports it), and the process's wall time with a normal exit and with the
`defectgen` console script's exit (`cli.finish`: no interpreter teardown).
Results: benchmarks/results/stage_startup.json and .md.

    python benchmarks/stage_startup.py [--repeats 3]

The median of `--repeats` fresh processes per row; this machine's speed drifts by tens
of percent over a day, so compare rows of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from defectgen.declarations import STAGES

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# each stage module once (pairs_gate runs the gate's), from the declarations
STAGE_MODULES = tuple(dict.fromkeys(s.module or s.name for s in STAGES))
PROBE = """
import json, sys, time
t = time.perf_counter()
import {module}
seconds = time.perf_counter() - t
print(json.dumps({{"seconds": seconds, "modules": len(sys.modules),
                  "loaded": [m for m in ("torch", "torchvision", "diffusers", "sklearn", "mlflow")
                             if m in sys.modules]}}), flush=True)
{exit}
"""
# both import the CLI after the measured import (a stage process has it anyway)
EXITS = {
    "normal": "from defectgen.cli import finish",
    "entry": "from defectgen.cli import finish; finish(0)",
}


def probe(module: str, repeats: int) -> dict:
    """Median import seconds of `module` over `repeats` fresh interpreters per exit, and
    the median wall time of those processes (start, import, exit) per exit."""
    rows, walls = [], {name: [] for name in EXITS}
    for _ in range(repeats):
        for name, code in EXITS.items():
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", PROBE.format(module=module, exit=code)],
                                 capture_output=True, text=True, check=True, cwd=REPO)  # fmt: skip
            walls[name].append(time.perf_counter() - started)
            rows.append(json.loads(out.stdout))
    return {
        "module": module,
        "import_s": statistics.median(r["seconds"] for r in rows),
        "process_s": statistics.median(walls["normal"]),
        "process_entry_s": statistics.median(walls["entry"]),
        "modules": rows[0]["modules"],
        "loaded": rows[0]["loaded"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    modules = ["defectgen.cli", "defectgen.tracking"]
    modules += [f"defectgen.stages.{m}" for m in STAGE_MODULES]
    rows = [probe(m, args.repeats) for m in modules]
    record = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),  # fmt: skip
        "python": platform.python_version(),
        "repeats": args.repeats,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "stage_startup.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Stage start-up: imports per stage process",
        "",
        f"{record['date']}, git {record['git']}, Python {record['python']}, median of "
        f"{args.repeats} fresh processes per row (`benchmarks/stage_startup.py`). A tracked "
        "stage process imports the CLI, its stage module and `defectgen.tracking` (mlflow); "
        "'process' is the whole `python -c 'import ...'` (start, import, exit); 'with entry' "
        "ends it the way the `defectgen` console script does (`cli.finish`: atexit handlers, "
        "no interpreter teardown).",
        "",
        "| module | import s | process s | with entry | modules loaded | of torch, "
        "torchvision, diffusers, sklearn, mlflow |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['module']} | {r['import_s']:.2f} | {r['process_s']:.2f} | "
                     f"{r['process_entry_s']:.2f} | {r['modules']} | "
                     f"{', '.join(r['loaded']) or '-'} |")  # fmt: skip
    (RESULTS / "stage_startup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
