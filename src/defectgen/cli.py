"""Command line: one subcommand per stage, each a thin shell around stages.<x>.run.

    defectgen ingest     --params params.yaml [--source DIR] --out DIR
    defectgen preprocess --params params.yaml --ingested DIR --out DIR
    defectgen check-params --params params.yaml
    defectgen export --format imagefolder|coco|yolo|yolo-seg --condition C --out DIR
    defectgen registry list|show NAME|promote NAME VERSION|rollback NAME
    defectgen schedule create|list|delete   (KFP recurring runs: nightly on a cluster)

Errors caused by input (params, data) print one clear message and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import threading
from pathlib import Path
from typing import NoReturn

from defectgen import export
from defectgen.atomic import atomic_write_json
from defectgen.config import apply_profile, load_params
from defectgen.errors import DefectgenError
from defectgen.runner import STAGES, Stage, execute


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="defectgen",
        description="Expand small defect-image datasets with diffusion models. "
        "Each stage reads the folders it is given and writes one output folder.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for stage in STAGES:
        p = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        p.add_argument(
            "--params",
            type=Path,
            default=Path("params.yaml"),
            help="params file (default: params.yaml)",
        )
        for name, required, text in stage.inputs:
            p.add_argument(f"--{name}", type=Path, required=required, help=text)
        p.add_argument("--out", type=Path, required=True, help="output folder (replaced whole)")
        p.add_argument("--metrics", type=Path, help="also write the stage's metrics here (JSON)")
        p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p = sub.add_parser(
        "export",
        help="the expanded training set of a finished run (one condition) and the real "
        "val/test splits, with provenance.csv, as ImageFolder, COCO or YOLO",
    )
    p.add_argument("--format", required=True, choices=export.FORMATS)
    p.add_argument("--condition", required=True, choices=export.CONDITIONS)
    p.add_argument("--out", type=Path, required=True, help="a new folder (replaced whole)")
    p.add_argument(
        "--branch",
        default="both",
        choices=export.BRANCHES,
        help="synthetic images from generate (images), pairs, or both",
    )
    p.add_argument(
        "--parent-boxes-up-to",
        type=float,
        default=0.5,
        metavar="STRENGTH",
        help="img2img images inherit the parent's mask/boxes up to this "
        "strength (default 0.5); above it they are left out of coco/yolo",
    )
    for name, default in (
        ("preprocessed", "data/preprocessed"),
        ("generated", "data/generated"),
        ("gated", "data/gated"),
        ("pairs", "data/pairs"),
        ("pairs-gated", "data/pairs_gated"),
    ):
        p.add_argument(f"--{name}", type=Path, default=Path(default), help=f"default {default}")
    p = sub.add_parser("check-params", help="validate a params file and exit")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p = sub.add_parser(
        "summary", help="what a finished run found, in a few lines (make demo ends with it)"
    )
    p.add_argument("--data", type=Path, default=Path("data"), help="the run's stage outputs")
    p = sub.add_parser(
        "profile", help="apply a profile's overrides (profiles/<name>.yaml) to params.yaml"
    )
    p.add_argument("profile", type=Path, help="e.g. profiles/sd-saliency-900.yaml")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p = sub.add_parser(
        "registry",
        help="class adapters in the MLflow model registry ($MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db)",
    )
    reg = p.add_subparsers(dest="action", metavar="<action>", required=True)
    reg.add_parser("list", help="every defectgen model with its champion and challenger")
    reg.add_parser("show", help="all versions of one model").add_argument("name")
    q = reg.add_parser("promote", help="make a version champion by hand")
    q.add_argument("name")
    q.add_argument("version")
    reg.add_parser("rollback", help="champion back to the version it replaced").add_argument("name")
    p = sub.add_parser(
        "schedule",
        help="nightly runs on a cluster: KFP recurring runs (--host or $KF_PIPELINES_ENDPOINT)",
    )
    sched = p.add_subparsers(dest="action", metavar="<action>", required=True)
    q = sched.add_parser("create", help="a recurring run of the compiled pipeline")
    q.add_argument("--name", default="defectgen-nightly")
    q.add_argument("--cron", default="0 0 2 * * *", help="six fields, seconds first (02:00)")
    q.add_argument(
        "--package",
        type=Path,
        default=Path("pipelines/build/defectgen.yaml"),
        help="the pipeline compiled with your params (python -m pipelines.compile --params)",
    )
    q.add_argument("--source-path", default="", help="the dataset folder as the pods see it")
    q.add_argument("--no-track", action="store_true", help="no MLflow from the pods")
    q.add_argument("--experiment", default="defectgen", help="KFP experiment")
    sched.add_parser("list", help="every recurring run on the endpoint")
    sched.add_parser("delete", help="remove a recurring run").add_argument("run_id")
    for q in sched.choices.values():
        q.add_argument("--host", help="KFP API endpoint (default: $KF_PIPELINES_ENDPOINT)")
        q.add_argument("--namespace", help="multi-user KFP: your profile namespace")
    return parser


def _alias(row: dict, alias: str) -> str:
    if row[alias] is None:
        return f"no {alias}"
    return f"{alias} v{row[alias]} ({row[f'{alias}_distance']})"


def _registry(args: argparse.Namespace) -> int:
    import mlflow

    from defectgen import registry, tracking

    mlflow.set_tracking_uri(tracking.tracking_uri())
    if args.action == "list":
        rows = registry.list_models()
        for r in rows:
            print(
                f"{r['name']}: "
                + ", ".join(_alias(r, a) for a in ("champion", "challenger"))
                + f", latest v{r['latest']}"
            )
        if not rows:
            print("no defectgen models registered yet")
    elif args.action == "show":
        for v in registry.show(args.name):
            tags = {k.removeprefix("defectgen."): t for k, t in v["tags"].items()}
            print(f"v{v['version']} {','.join(v['aliases']) or '-'} {json.dumps(tags)}")
    elif args.action == "promote":
        registry.promote(args.name, args.version)
        print(f"{args.name}: champion -> v{args.version}")
    else:
        print(f"{args.name}: champion -> v{registry.rollback(args.name)}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from defectgen.cluster import recurring

    if args.action == "create":
        run_id = recurring.create(
            host=args.host,
            name=args.name,
            cron=args.cron,
            package=args.package,
            source_path=args.source_path,
            track=not args.no_track,
            experiment=args.experiment,
            namespace=args.namespace,
        )
        print(f"recurring run {run_id}: {args.name} at '{args.cron}' (one at a time, no catch-up)")
    elif args.action == "list":
        rows = recurring.list_runs(host=args.host, namespace=args.namespace)
        for r in rows:
            print(f"{r['id']}  {r['name']}  '{r['cron']}'  {r['status']}")
        if not rows:
            print("no recurring runs")
    else:
        recurring.delete(host=args.host, run_id=args.run_id)
        print(f"recurring run {args.run_id}: deleted")
    return 0


def _run_stage(stage: Stage, args: argparse.Namespace) -> int:
    params = load_params(args.params)
    inputs = {name: getattr(args, name) for name, _, _ in stage.inputs}
    inputs = {k: v for k, v in inputs.items() if v is not None}
    for name, path in inputs.items():
        if not path.exists():
            raise DefectgenError(f"--{name} {path}: no such folder")
    metrics, wall_s = execute(
        stage, params, out_dir=args.out, inputs=inputs, track=not args.no_track
    )
    if args.metrics:
        # Wall time goes to MLflow only: the metrics file stays reproducible for DVC.
        atomic_write_json(args.metrics, metrics)
    summary = ", ".join(f"{k}={v:g}" for k, v in metrics.items() if "/" not in k)
    print(f"defectgen {stage.name}: done in {wall_s:.1f} s -> {args.out} ({summary})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "registry":
            return _registry(args)
        if args.command == "schedule":
            return _schedule(args)
        if args.command == "export":
            run = export.Run(
                args.preprocessed, args.generated, args.gated, args.pairs, args.pairs_gated
            )
            summary = export.export(
                run,
                fmt=args.format,
                condition=args.condition,
                out=args.out,
                branch=args.branch,
                parent_boxes_up_to=args.parent_boxes_up_to,
            )
            print(json.dumps(summary, indent=2))
            return 0
        if args.command == "profile":
            params = apply_profile(args.params, args.profile)
            print(f"{args.params}: {args.profile} applied (params hash {params.section_hash()})")
            return 0
        if args.command == "summary":
            from defectgen.reports import summary

            print(summary.text(args.data))
            return 0
        if args.command == "check-params":
            params = load_params(args.params)
            print(f"{args.params}: ok (params hash {params.section_hash()})")
            return 0
        stage = next(s for s in STAGES if s.name == args.command)
        return _run_stage(stage, args)
    except DefectgenError as exc:
        print(f"defectgen {args.command}: error: {exc}", file=sys.stderr)
        return 2


def finish(rc: int) -> NoReturn:
    """Exit with `rc`; after a success, without the interpreter's teardown.

    A finished stage process holds ~4,900 imported modules (torch, diffusers, mlflow);
    tearing them down costs seconds per diffusion-stage process
    (benchmarks/results/stage_startup.md) and does nothing a finished process needs.
    The atexit handlers (MLflow, logging, temporary folders) still run and stdout/stderr
    are flushed; a failure, or a thread a normal exit would wait for, takes the normal
    exit.
    """
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if rc != 0 or any(not t.daemon and t.is_alive() for t in others):
        sys.exit(rc)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def entry() -> None:
    """The `defectgen` console script."""
    finish(main())


if __name__ == "__main__":
    entry()
