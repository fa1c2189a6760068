"""dvc.yaml, generated in full from the stage declarations (defectgen.declarations.STAGES):
each stage's cmd passes its declared inputs from their producers' folders; its deps are those
folders and the files of its import closure inside the package, computed from the code; its
params are the keys it declares it reads; its outs, metrics file and plots follow from its
declared output, curves and plots.

    python -m pipelines.dvc_stages            # check: exit 1 when dvc.yaml differs
    python -m pipelines.dvc_stages --write    # write dvc.yaml

The closure follows every `import` and `from ... import` of `defectgen` modules anywhere in
a module (lazy imports inside functions included), plus the `__init__.py` of each package
on the way. `params_read` scans the same files for the params keys they read
(pipelines.params_read): what a stage's declaration must be (tests/test_declarations.py).
A stage that reads every parameter lists the whole params file.
"""

from __future__ import annotations

import argparse
import ast
import sys
import textwrap
from functools import cache
from pathlib import Path

from defectgen import declarations
from pipelines import params_read as reads

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
DVC_YAML = REPO / "dvc.yaml"


def module_file(name: str) -> Path | None:
    """The source file of module `name` under src/, or None (not a module of ours)."""
    base = SRC / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def _imports(path: Path) -> frozenset[str]:
    """The defectgen modules `path` imports (a `from pkg import name` counts name when it
    is a module, else pkg)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "defectgen"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("defectgen"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if module_file(sub) else node.module)
    return frozenset(out)


def closure(module: str) -> list[Path]:
    """Every source file `module` needs, relative to the repo, sorted."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # the packages on the way run their __init__
            path = module_file(".".join(parts[:i]))
            if path is None or path in seen:
                continue
            seen.add(path)
            todo += sorted(_imports(path))
    return sorted(p.relative_to(REPO) for p in seen if p.stat().st_size > 0)


def params_read(module: str) -> set[str]:
    """The params keys the code of `module`'s import closure reads (pipelines.params_read)."""
    return reads.read_by([REPO / p for p in closure(module)])


RAW_DIR = "data/raw"  # where a user's own dataset goes (README: Your own data)
HEADER = """\
# Generated from the stage declarations (src/defectgen/declarations.py) by
# `python -m pipelines.dvc_stages --write`; tests fail when it differs, so change the
# declaration, not this file. Run with `dvc repro` (make demo). Each cmd is the CLI, a
# thin shell around stages.<module>.run; the KFP pipeline runs the same declarations.
# Each stage writes data/<its output artifact> and metrics/<stage>.json; its deps are its
# inputs' folders and the source files of its import closure, its params the keys it reads.
"""
WIDTH = 92


def folder(artifact: str) -> str:
    """Where dvc.yaml's stages write an artifact (its producer's Stage.folder)."""
    return declarations.producer(artifact).folder


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ")


def _cmd(stage) -> list[str]:
    """`defectgen <stage> ...` folded (YAML `>-`) into lines of at most WIDTH."""
    words = [f"--{name} {folder(name)}" for name, _, _ in stage.inputs if name != declarations.RAW]
    words.append(f"--out {folder(stage.output)}")
    if stage.metrics_file:
        words.append(f"--metrics {stage.metrics_file}")
    lines, line = [f"      defectgen {stage.name} --params params.yaml"], "     "
    for word in words:
        if len(line) + 1 + len(word) > WIDTH:
            lines.append(line)
            line = "     "
        line += " " + word
    return ["    cmd: >-", *lines, line]


def _stage(stage) -> list[str]:
    out = _comment(stage.help, "  ")
    if stage.always_runs:
        out += _comment("not reproducible files: no DVC outputs, runs on every `dvc repro`", "  ")
    out += [f"  {stage.name}:", *_cmd(stage)]
    if stage.always_runs:
        out.append("    always_changed: true")
    out.append("    deps:")
    for name, _, _ in stage.inputs:
        if name == declarations.RAW:
            out.append(f"      - {RAW_DIR}  # your dataset (params data.root: README, own data)")
        else:
            out.append(f"      - {folder(name)}")
    out += [f"      - {p}" for p in closure(stage.module_name)]
    if stage.reads == (reads.ALL,):
        out += ["    params:", "      - params.yaml:  # every parameter"]
    elif stage.reads:
        out += ["    params:", *(f"      - {k}" for k in stage.reads)]
    if not stage.always_runs:
        out += ["    outs:", f"      - {folder(stage.output)}"]
        out += ["    metrics:", f"      - {stage.metrics_file}:", "          cache: false"]
    return out


def _plots() -> list[str]:
    """Loss curves of every stage that trains, and each stage's declared plots."""
    out = [
        "",
        "# `dvc plots show` (or `dvc plots diff` against another commit): loss curves, the",
        "# sweep's distance per (strength, guidance) cell (one heatmap per class) and test",
        "# accuracy per model and condition.",
        "plots:",
    ]
    for stage in declarations.STAGES:
        specs = [(c, "", "step", "loss") for c in stage.curves] + list(stage.plots)
        for path, template, x, y in specs:
            out.append(f"  - {folder(stage.output)}/{path}:")
            if template:
                out.append(f"      template: {template}")
            out += [f"      x: {x}", f"      y: {y}"]
    return out


def _depths() -> dict[str, int]:
    """Each stage's longest distance from the DAG's start (its inputs' producers + 1)."""
    depth: dict[str, int] = {}
    for name, inputs in declarations.graph():
        depth[name] = 1 + max((depth[p] for p in inputs.values()), default=-1)
    return depth


def chains() -> list[list[str]]:
    """The DAG as paths: the longest path first, then the longest path through stages
    not yet drawn, each led by its latest drawn producer and ended by its first drawn
    consumer (ties: declaration order). Every stage is on exactly one path as its own."""
    order = [name for name, _ in declarations.graph()]
    producers = {name: set(inputs.values()) for name, inputs in declarations.graph()}
    depth, drawn, out = _depths(), set(), []
    while len(drawn) < len(order):
        best: dict[str, list[str]] = {}  # stage -> the longest undrawn path ending there
        for name in order:
            if name in drawn:
                continue
            before = [best[p] for p in order if p in producers[name] and p in best]
            best[name] = max(before, key=len, default=[]) + [name]
        path = max(best.values(), key=len)  # the first of the longest, in order
        lead = [p for p in order if p in producers[path[0]] and p in drawn]
        head = [max(lead, key=lambda p: depth[p])] if lead else []
        tail = [c for c in order if c in drawn and path[-1] in producers[c]][:1]
        out.append(head + path + tail)
        drawn |= set(path)
    return out


def drawing() -> str:
    """`chains` drawn one per line, each led from under its first stage's place above."""
    lines: list[str] = []
    columns: dict[str, int] = {}
    for chain in chains():
        indent = columns.get(chain[0], 0)
        line = " " * indent + " -> ".join(chain)
        at = indent
        for name in chain:
            columns.setdefault(name, at)
            at += len(name) + len(" -> ")
        lines.append(line)
    return "\n".join(lines)


DAG_START = "<!-- the DAG: python -m pipelines.dvc_stages --write -->"
DAG_END = "<!-- end of the DAG -->"
DAG_DOCS = (REPO / "README.md", REPO / "docs" / "architecture.md")


def dag_block() -> str:
    """The drawing as the README and architecture.md hold it, between its markers."""
    return f"{DAG_START}\n```\n{drawing()}\n```\n{DAG_END}"


def _with_dag(text: str) -> str:
    start, end = text.index(DAG_START), text.index(DAG_END) + len(DAG_END)
    return text[:start] + dag_block() + text[end:]


def render() -> str:
    """The whole dvc.yaml, from the declarations."""
    lines = HEADER.rstrip("\n").split("\n") + ["stages:"]
    for i, stage in enumerate(declarations.STAGES):
        lines += ([""] if i else []) + _stage(stage)
    return "\n".join(lines + _plots()) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite dvc.yaml in place")
    args = ap.parse_args()
    text = DVC_YAML.read_text(encoding="utf-8") if DVC_YAML.is_file() else ""
    new = render()
    if args.write:
        DVC_YAML.write_text(new, encoding="utf-8")
        for doc in DAG_DOCS:  # the drawing of the DAG where the docs show it
            doc.write_text(_with_dag(doc.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"wrote {DVC_YAML} and the DAG in {', '.join(d.name for d in DAG_DOCS)}")
        return 0
    docs = {d.name: d.read_text(encoding="utf-8") for d in DAG_DOCS}
    stale = [name for name, doc in docs.items() if _with_dag(doc) != doc]
    stale += ["dvc.yaml"] if new != text else []
    if stale:
        print(f"{', '.join(stale)}: differ from the stage declarations; run "
              "python -m pipelines.dvc_stages --write")  # fmt: skip
        return 1
    print("dvc.yaml and the docs' DAG match the stage declarations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
