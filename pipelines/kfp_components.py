"""The KFP components of the stages, rendered from their declarations:
`python -m pipelines.kfp_components --write` writes components/<stage>.py for every
stage in defectgen.declarations.STAGES; tests/cluster/test_compiled_pipeline.py fails
when a file differs from its render.

Why files and not components built at import: a lightweight KFP component ships its
function's source to the pod (kfp reads it with inspect.getsource), so each component
must exist as source. Each is a thin shell: the stage's declared inputs as input
artifacts (ingest's raw `source` as a string), its output artifact and a Metrics
artifact, one call of defectgen.runner.run_task. Three stages get more, said here once:
finetune adapts the one class `label` it is handed (the per-class fan-out), gate returns
that class's verdict for the pipeline's dsl.If, and report hands its page and summary to
KFP's HTML and Markdown artifacts.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from defectgen.declarations import RAW, STAGES, Stage

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "components"
MODELS = {"base", "adapters"}  # KFP artifact types: the prior and the adapters are models
LABELLED = {"finetune", "gate"}  # handed the class: finetune adapts it, gate judges it
WIDTH = 92

HEADER = '''\
"""Generated from the stage declaration (src/defectgen/declarations.py) by
`python -m pipelines.kfp_components --write`: change the declaration, not this file."""

'''


def _kind(artifact: str) -> str:
    return "Model" if artifact in MODELS else "Dataset"


def _doc(stage: Stage) -> str:
    module = stage.module or stage.name
    text = f"{stage.help[0].upper()}{stage.help[1:]} (defectgen.stages.{module})."
    if stage.name == "finetune":
        text += " Adapts the one class `label` (the pipeline runs it once per class)."
    if stage.name == "gate":
        text += ' Returns "pass" or "fail" for class `label`, for the pipeline\'s dsl.If.'
    if stage.name == "report":
        text += " The KFP UI shows the page and the summary."
    lines = textwrap.wrap(text, WIDTH - 7)
    return "\n".join(['    """' + lines[0], *("    " + line for line in lines[1:])]) + '"""'


def render(stage: Stage) -> str:
    """components/<stage>.py for `stage`."""
    name, pages = stage.name, stage.name == "report"
    args = ["params: str"]
    for artifact, _, _ in stage.inputs:
        kind = "str" if artifact == RAW else f"Input[{_kind(artifact)}]"
        args.append(f"{artifact}: {kind}")
    args.append("track: bool")
    if name in LABELLED:
        args.append("label: str")
    if pages:
        args += ["html: Output[HTML]", "markdown: Output[Markdown]"]
    else:
        args += [f"{stage.output}: Output[{_kind(stage.output)}]", "metrics: Output[Metrics]"]
    artifacts = [a for a, _, _ in stage.inputs if a != RAW]
    types = {"Output", *({"Input"} if artifacts else set()), *map(_kind, artifacts)}
    types |= {"HTML", "Markdown"} if pages else {_kind(stage.output), "Metrics"}
    paths = [f'"{a}": {a}' if a == RAW else f'"{a}": {a}.path' for a, _, _ in stage.inputs]
    call = [
        f'"{name}"',
        "params",
        "out_dir=str(out)" if pages else f"out_dir={stage.output}.path",
        "inputs={\n" + "".join(f"        {p},\n" for p in paths) + "    }",
        "track=track",
    ]
    if not pages:
        call.append("metrics=metrics")
    if name == "finetune":
        call.append("only_class=label")
    body = []
    if pages:
        body += [
            "import shutil",
            "import tempfile",
            "from pathlib import Path",
            "",
            "from defectgen.runner import key_by_run, run_task",
            "",
            "key_by_run(html.path)  # its MLflow parent under kfp.local (a temp folder is not)",
            'out = Path(tempfile.mkdtemp()) / "report"',
        ]
    else:
        if name == "gate":
            body.append("from defectgen.cluster.fanin import verdict")
        body += ["from defectgen.runner import run_task", ""]
    body.append("run_task(")
    body += [f"    {part}," for part in call]
    body.append(")")
    if pages:
        body += [
            'shutil.copyfile(out / "report.html", html.path)  # KFP renders a file, not a folder',
            'shutil.copyfile(out / "report.md", markdown.path)',
        ]
    if name == "gate":
        body.append(f"return verdict({stage.output}.path, label)")
    returns = " -> str" if name == "gate" else ""
    lines = [
        HEADER + "from kfp import dsl",
        f"from kfp.dsl import {', '.join(sorted(types, key=lambda t: (not t.isupper(), t)))}",
        "",
        "from components import IMAGE",
        "",
        "",
        "@dsl.component(base_image=IMAGE, install_kfp_package=False)",
        f"def {name}(",
        *(f"    {a}," for a in args),
        f"){returns}:",
        _doc(stage),
        *(("    " + b.replace("\n", "\n    ")) if b else "" for b in body),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="write components/<stage>.py")
    args = ap.parse_args(argv)
    stale = []
    for stage in STAGES:
        path, text = FOLDER / f"{stage.name}.py", render(stage)
        if args.write:
            path.write_text(text, encoding="utf-8")
        elif not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(path.name)
    if stale:
        print(f"stale: {', '.join(stale)}; run python -m pipelines.kfp_components --write",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
