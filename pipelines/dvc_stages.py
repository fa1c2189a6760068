"""dvc.yaml from the stage declarations (defectgen.runner.STAGES): each stage's source deps
are the files of its import closure inside the package, computed from the code, and its
params are the keys the stage declares it reads.

    python -m pipelines.dvc_stages            # check: exit 1 and say what differs
    python -m pipelines.dvc_stages --write    # rewrite dvc.yaml's src deps and params

The closure follows every `import` and `from ... import` of `defectgen` modules anywhere in
a module (lazy imports inside functions included), plus the `__init__.py` of each package
on the way. `params_read` scans the same files for `params.<section>[.<key>]`: what a
stage's declaration must cover (tests/test_stage_declarations.py).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
DVC_YAML = REPO / "dvc.yaml"
_NOT_KEYS = {"section_hash", "keyed", "model_dump", "synthesised"}  # Params methods


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


def _is_params(node: ast.AST) -> bool:
    """`params` or `<anything>.params` (a stage's Params, or a helper's self.params)."""
    if isinstance(node, ast.Name):
        return node.id == "params"
    return isinstance(node, ast.Attribute) and node.attr == "params"


def params_read(module: str) -> set[str]:
    """`params.<section>[.<key>]` attribute chains in the code of the module's closure
    (sections and keys; Params' methods left out)."""
    found = set()
    for path in closure(module):
        tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
        attributes = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
        has_key = {id(n.value) for n in attributes}  # params.<section> followed by .<key>
        for node in attributes:
            whole = id(node) not in has_key  # the whole section (e.g. cfg = params.train)
            if _is_params(node.value) and node.attr not in _NOT_KEYS and whole:
                found.add(node.attr)
            inner = node.value
            if (
                isinstance(inner, ast.Attribute)
                and _is_params(inner.value)
                and inner.attr not in _NOT_KEYS
            ):
                found.add(f"{inner.attr}.{node.attr}")
    return found


def covered(key: str, declared: tuple[str, ...]) -> bool:
    """Whether a declared section or key covers `key` (a section covers its keys)."""
    return any(key == d or key.startswith(d + ".") for d in declared)


def expected() -> dict[str, dict[str, list[str]]]:
    """Per stage: the src deps and params dvc.yaml must have."""
    from defectgen.runner import STAGES

    return {
        s.name: {"src": [str(p) for p in closure(s.module_name)], "params": list(s.reads)}
        for s in STAGES
    }


def _stage_blocks(lines: list[str]) -> dict[str, tuple[int, int]]:
    """dvc.yaml line ranges of each stage's block: from its 2-space indented name to the
    next stage or top-level key, trailing blank lines left out."""
    top = next(i for i, line in enumerate(lines) if line.rstrip() == "stages:")
    starts = []
    end_of_stages = len(lines)
    for i in range(top + 1, len(lines)):
        if lines[i] and not lines[i].startswith(" "):
            end_of_stages = i
            break
        if m := re.match(r"^  ([a-z_]+):\s*$", lines[i]):
            starts.append((i, m.group(1)))
    blocks = {}
    for k, (start, name) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else end_of_stages
        while end > start and not lines[end - 1].strip():
            end -= 1
        blocks[name] = (start, end)
    return blocks


def _rewrite_block(block: list[str], src: list[str], params: list[str]) -> list[str]:
    """One stage's lines with its src deps and params section replaced: src deps at the
    end of `deps`, `params` right after `deps`."""
    out: list[str] = []
    section = None
    for line in block:
        head = re.match(r"^    ([a-z_]+):", line)
        if head:
            section = head.group(1)
            if section == "params":
                continue  # rewritten after deps
            out.append(line)
            continue
        item = line.startswith("      - ")
        if section == "params" and item:
            continue
        if section == "deps" and item and line.split("- ", 1)[1].startswith("src/"):
            continue
        out.append(line)
    deps = next(i for i, line in enumerate(out) if line.startswith("    deps:"))
    end = deps + 1
    while end < len(out) and out[end].startswith("      "):
        end += 1
    added = [f"      - {p}" for p in src]
    if params:
        added += ["    params:"] + [f"      - {k}" for k in params]
    return out[:end] + added + out[end:]


def rewrite(text: str) -> str:
    """dvc.yaml with each declared stage's src deps and params replaced."""
    lines = text.split("\n")
    want = expected()
    for name, (start, end) in sorted(_stage_blocks(lines).items(), key=lambda kv: -kv[1][0]):
        if name in want:
            lines[start:end] = _rewrite_block(
                lines[start:end], want[name]["src"], want[name]["params"]
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite dvc.yaml in place")
    args = ap.parse_args()
    text = DVC_YAML.read_text(encoding="utf-8")
    new = rewrite(text)
    if args.write:
        DVC_YAML.write_text(new, encoding="utf-8")
        print(f"wrote {DVC_YAML}")
        return 0
    if new != text:
        print(
            "dvc.yaml differs from the stage declarations: python -m pipelines.dvc_stages --write"
        )
        return 1
    print("dvc.yaml matches the stage declarations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
