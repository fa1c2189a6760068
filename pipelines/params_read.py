"""Which params keys a stage's code reads: a static scan of its import closure (the same
files dvc.yaml lists as its deps). What each stage declares it reads
(defectgen.declarations.Stage.reads) must be exactly this (tests/test_declarations.py);
dvc.yaml's params, the resume keys, MLflow's logged params and the KFP tasks' params
inputs all follow the declaration, so a stage reruns only when a key it reads changes.

A key is `<section>.<key>` ("gate.margin"), a top-level value ("seed"), a whole section
("data": the code uses the section object in a way the scan cannot follow) or `*` (every
parameter: the code hashes or dumps the whole params). Read through:

- `params.<section>.<key>`, where `params` is any name or attribute called `params`
  (a stage's argument, a helper's `self.params`) or a name annotated `Params`;
- a name bound to a section (`cfg = params.gate`, `self.cfg = params.gate`, or an argument
  annotated with the section's class, `cfg: GateConfig`): `cfg.<key>`;
- a method of a params class: the keys it reads through `self` (`generate.settings`
  reads strength, guidance and per_class).

A section object passed to a function whose parameter is annotated with its class is
followed there; passed anywhere else (an unannotated function, a list, a return) it
counts as read whole. Why our own scan: no library maps attribute reads of pydantic
settings to the modules that make them; the runtime guard (defectgen.scoped) is the
other half, failing any stage that reads a key its declaration lacks in the tests' runs.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from pydantic import BaseModel

from defectgen import config
from defectgen.scoped import ALL

# methods that read every key of their object
WHOLE = {"model_dump", "model_dump_json", "model_copy", "section_hash", "keyed"}


def _section_classes() -> dict[str, str]:
    """Class name -> its top-level section ("GateConfig" -> "gate"; "Params" -> "")."""
    out = {"Params": ""}
    for name, field in config.Params.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out[field.annotation.__name__] = name
    return out


SECTION_OF = _section_classes()
# the fields of each section ("" = the top level of Params)
FIELDS = {
    section: set(
        (config.Params.model_fields[section].annotation if section else config.Params).model_fields
    )
    for section in SECTION_OF.values()
}


def _annotated(node: ast.AST | None) -> str | None:
    """The section an annotation names (GateConfig, GateConfig | None, "GateConfig")."""
    for n in ast.walk(node) if node is not None else ():
        name = (
            n.id if isinstance(n, ast.Name)
            else n.attr if isinstance(n, ast.Attribute)
            else n.value if isinstance(n, ast.Constant) and isinstance(n.value, str)
            else None
        )  # fmt: skip
        if name in SECTION_OF:
            return SECTION_OF[name]
    return None


def _arguments(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.arg]:
    a = fn.args
    return a.posonlyargs + a.args + a.kwonlyargs


class _Scan:
    """The keys one file's code reads; `typed` (from `_typed`) says which functions of the
    closure take which section by annotation."""

    def __init__(self, tree: ast.AST, typed: dict[str, dict], methods: dict):
        self.parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        self.typed = typed
        self.methods = methods
        self.found: set[str] = set()
        self.reached: set[str] = set()  # sections taken from a Params here

    def resolve(self, node: ast.AST, env: dict[str, str]) -> str | None:
        """The section `node` evaluates to ("" = the whole Params), or None."""
        if isinstance(node, ast.Name):
            return "" if node.id == "params" else env.get(node.id)
        if isinstance(node, ast.Attribute):
            if node.attr == "params":
                return ""
            if (key := ast.unparse(node)) in env:
                return env[key]
            if node.attr and node.attr in FIELDS and self.resolve(node.value, env) == "":
                return node.attr
        return None

    def _bind(self, body: list[ast.stmt], env: dict[str, str]) -> dict[str, str]:
        """env plus the names and `self.` attributes the statements bind to a section."""
        env = dict(env)
        for node in (n for stmt in body for n in ast.walk(stmt)):
            if isinstance(node, ast.AnnAssign) and (s := _annotated(node.annotation)) is not None:
                env[ast.unparse(node.target)] = s
            if not isinstance(node, ast.Assign):
                continue
            pairs = [(t, node.value) for t in node.targets]
            if isinstance(node.value, ast.Tuple):  # cfg, gen = params.sweep, params.generate
                for t in node.targets:
                    if isinstance(t, ast.Tuple):
                        pairs += list(zip(t.elts, node.value.elts, strict=False))
            for target, value in pairs:
                s = self.resolve(value, env)
                if s is not None and isinstance(target, (ast.Name, ast.Attribute)):
                    env[ast.unparse(target)] = s
        return env

    def _function(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, env: dict[str, str]):
        own = {a.arg: s for a in _arguments(fn) if (s := _annotated(a.annotation)) is not None}
        self.scan(fn.body, self._bind(fn.body, {**env, **own}))

    def _class(self, cls: ast.ClassDef, env: dict[str, str]):
        """`self.<x> = <a section>` in any method binds it in all of them."""
        bound: dict[str, str] = {}
        for fn in cls.body:
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                own = {a.arg: s for a in _arguments(fn) if (s := _annotated(a.annotation))}
                inner = self._bind(fn.body, {**env, **own})
                bound |= {k: v for k, v in inner.items() if k.startswith("self.")}
        self.scan(cls.body, {**env, **bound})

    def scan(self, stmts: list[ast.stmt], env: dict[str, str]):
        todo: list[ast.AST] = list(stmts)
        while todo:
            node = todo.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._function(node, env)
            elif isinstance(node, ast.ClassDef):
                self._class(node, env)
            else:
                self._visit(node, env)
                todo.extend(ast.iter_child_nodes(node))

    def _visit(self, node: ast.AST, env: dict[str, str]):
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value, env)
            if base is not None and (base, node.attr) in self.methods:
                self.found |= self.methods[base, node.attr]
                if base == "":  # a method of Params takes its sections from the Params
                    self.reached |= {k.split(".")[0] for k in self.methods[base, node.attr]}
            elif base == "" and node.attr in WHOLE:
                self.found |= self._hashed(node)
            elif base == "" and node.attr in FIELDS[""] and node.attr not in FIELDS:
                self.found.add(node.attr)  # a top-level value (seed)
            elif base == "" and node.attr in FIELDS:
                self.reached.add(node.attr)
            elif base and node.attr in FIELDS[base]:
                self.found.add(f"{base}.{node.attr}")
            elif base:
                self.found.add(base)  # a method of the section that reads it all
        if isinstance(node, (ast.Name, ast.Attribute)):
            section = self.resolve(node, env)
            if section and not self._followed(node, env):
                self.found.add(section)

    def _hashed(self, node: ast.Attribute) -> set[str]:
        """params.section_hash("a", "b") / keyed(...) with constant keys reads those keys;
        with none (or computed ones), every parameter."""
        call = self.parents.get(node)
        if isinstance(call, ast.Call) and node.attr in ("section_hash", "keyed") and call.args:
            keys = {a.value for a in call.args if isinstance(a, ast.Constant)}
            if len(keys) == len(call.args):
                return keys
        return {ALL}

    def _followed(self, node: ast.AST, env: dict[str, str]) -> bool:
        """Whether a section object's use is followed elsewhere: a key of it is read
        (`cfg.margin`), it is bound to a name this scan follows, or it is passed to a
        function that takes its section by annotation."""
        if isinstance(getattr(node, "ctx", None), ast.Store):
            return True
        parent = self.parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.value is node:
            return True
        if isinstance(parent, ast.keyword):
            call = self.parents.get(parent)
            return isinstance(call, ast.Call) and self._takes(call, parent.arg, node, env)
        if isinstance(parent, ast.Call) and node in parent.args:
            return self._takes(parent, parent.args.index(node), node, env)
        if isinstance(parent, ast.Tuple):
            parent = self.parents.get(parent)
        return isinstance(parent, (ast.Assign, ast.AnnAssign))

    def _takes(self, call: ast.Call, where: int | str | None, node, env) -> bool:
        f = call.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        return self.resolve(node, env) in self.typed.get(name, {}).get(where, ())


def _typed(paths: list[Path]) -> dict[str, dict]:
    """Function (or class, through its __init__) name -> {argument position or name: the
    sections it takes by annotation}; same-named functions pool theirs."""
    out: dict[str, dict] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            fn = node
            if isinstance(node, ast.ClassDef):
                fn = next((n for n in node.body if isinstance(n, ast.FunctionDef)
                           and n.name == "__init__"), None)  # fmt: skip
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            entry = out.setdefault(node.name, {})
            a = fn.args
            positional = [x for x in a.posonlyargs + a.args if x.arg not in ("self", "cls")]
            for where, arg in [*enumerate(positional), *((x.arg, x) for x in _arguments(fn))]:
                if (s := _annotated(arg.annotation)) is not None:
                    entry.setdefault(where, set()).add(s)
    return out


@cache
def _methods() -> dict[tuple[str, str], set[str]]:
    """(section, method name) -> the keys a method of a params class reads through `self`
    (validators included: harmless, a stage never calls them)."""
    tree = ast.parse(Path(config.__file__).read_text(encoding="utf-8"))
    out: dict[tuple[str, str], set[str]] = {}
    for cls in tree.body:
        if not (isinstance(cls, ast.ClassDef) and cls.name in SECTION_OF):
            continue
        for fn in cls.body:
            if isinstance(fn, ast.FunctionDef) and fn.name not in WHOLE:
                scan = _Scan(fn, {}, {})
                scan.scan(fn.body, {"self": SECTION_OF[cls.name]})
                out[SECTION_OF[cls.name], fn.name] = scan.found - {SECTION_OF[cls.name]}
    return out


def normalise(found: set[str]) -> set[str]:
    """`*` alone if present; a section read whole, or all of whose keys are read, stands
    for its keys."""
    if ALL in found:
        return {ALL}
    whole = {k for k in found if "." not in k and k in FIELDS}
    for section, fields in FIELDS.items():
        if section and fields and {f"{section}.{f}" for f in fields} <= found:
            whole.add(section)
    return {k for k in found if k.split(".")[0] not in whole or "." not in k} | whole


def read_by(paths: list[Path]) -> set[str]:
    """The keys the code of `paths` (a stage's import closure) reads, normalised. A
    section's keys count only where the code takes that section from a Params: a helper
    annotated `cfg: CopyPasteConfig` in the closure reads nothing for a stage that never
    hands it params.copy_paste."""
    typed, found, reached = _typed(paths), set(), set()
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        scan = _Scan(tree, typed, _methods())
        scan.scan(tree.body, {})
        found |= scan.found
        reached |= scan.reached
    return normalise({k for k in found if k.split(".")[0] in reached | {ALL} or k in FIELDS[""]})
