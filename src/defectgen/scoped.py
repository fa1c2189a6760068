"""The params a stage may read: a read-only view of Params that hands out the keys the
stage declares (declarations.Stage.reads) and raises on any other; and the same keys
rendered as a KFP task's params input (`task_params`), read back by `from_task_params`.

Its reads are what dvc.yaml's params, the resume key and the KFP task's params input
follow, so a key read but not declared would let a changed value reuse a stale result.
The static scan (pipelines.params_read) checks the declarations against the code; this
view catches what a scan cannot see (a key reached through a dynamic name, a helper
without annotations) in every run of a stage, the tests' included.
"""

from __future__ import annotations

import json
import types
from typing import Any

from pydantic import BaseModel

from defectgen.config import ALL, Params
from defectgen.errors import ConfigError

# what the runner reads around every stage: the MLflow experiment and the parent run's name
RUNNER_READS = ("data.name", "tracking")

# pydantic's methods that read every key of their object
_WHOLE = ("model_dump", "model_dump_json", "model_copy")


class UndeclaredRead(RuntimeError):
    """A stage read a params key its declaration does not list (a bug in the stage's
    declaration or code, never the user's input)."""


def covered(key: str, declared: tuple[str, ...]) -> bool:
    """Whether a declared section or key covers `key` (a section covers its keys)."""
    return ALL in declared or any(key == d or key.startswith(d + ".") for d in declared)


def task_params(params: Params, reads: tuple[str, ...]) -> str:
    """The keys `reads` names (with the runner's own) and their values, as one line of
    JSON: a KFP task's params input. KFP's cache key covers a task's inputs, so a task is
    served from the cache until a key it reads changes (a line: kfp copies a constant
    into a comment header that breaks on a multi-line string)."""
    keys = (ALL,) if ALL in reads else (*reads, *RUNNER_READS)
    kept = [k for k in dict.fromkeys(keys) if not any(k.startswith(s + ".") for s in keys)]
    return json.dumps(params.keyed(*kept), sort_keys=True)


def from_task_params(text: str, where: str, only_class: str = "") -> Params:
    """The params a task was handed (`task_params`), optionally narrowed to one class
    (finetune in the per-class fan-out): they carry only the task's keys."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not the JSON that task_params renders ({exc})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected an object of params keys, got {values!r}")
    if only_class:
        if "finetune" in values:
            values["finetune"] = {**values["finetune"], "classes": [only_class]}
        else:
            values["finetune.classes"] = [only_class]
    return Params.from_keyed(values, where)


def scoped(params: Any, reads: tuple[str, ...], stage: str) -> Any:
    """`params` as stage `stage` may read them (itself when it reads every key)."""
    return params if ALL in reads else _View(params, "", reads, stage)


class _View:
    """A params object (or a section of one) through which only declared keys are read.
    `isinstance(view, GateConfig)` holds; methods of our params classes run on the view,
    so the keys they read are checked too."""

    __slots__ = ("_target", "_path", "_reads", "_stage")

    def __init__(self, target: BaseModel, path: str, reads: tuple[str, ...], stage: str):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_reads", reads)
        object.__setattr__(self, "_stage", stage)

    @property
    def __class__(self):  # noqa: D105 (isinstance and pydantic see the params class)
        return type(self._target)

    def _refuse(self, key: str):
        raise UndeclaredRead(
            f"stage {self._stage!r} read params key {key!r}, which its declaration does "
            f"not list (it declares {', '.join(self._reads)}): add it to the stage's reads "
            "in src/defectgen/declarations.py, then `python -m pipelines.dvc_stages --write`"
        )

    def __getattr__(self, name: str) -> Any:
        target, cls = self._target, type(self._target)
        key = f"{self._path}.{name}" if self._path else name
        if name in cls.model_fields:
            if covered(key, self._reads):
                return getattr(target, name)
            if any(r.startswith(key + ".") for r in self._reads):
                return _View(getattr(target, name), key, self._reads, self._stage)
            self._refuse(key)
        if name in ("keyed", "section_hash"):  # Params' own: reads the keys it is given
            return self._hashing(getattr(target, name))
        if name in _WHOLE:
            self._refuse(self._path or ALL)
        own = next(
            (c.__dict__[name] for c in cls.__mro__ if name in c.__dict__ and c is not BaseModel),
            None,
        )
        if isinstance(own, types.FunctionType):  # our method: its reads go through the view
            return types.MethodType(own, self)
        return getattr(target, name)

    def _hashing(self, method):
        def checked(*keys: str):
            for key in keys or (ALL,):
                if not covered(key, self._reads):
                    self._refuse(key)
            return method(*keys)

        return checked

    def __reduce__(self):  # pickled as a view (a DataLoader worker gets the same limits)
        return (_View, (self._target, self._path, self._reads, self._stage))

    def __setattr__(self, name: str, value: Any):
        raise TypeError("params are read-only")

    def __repr__(self) -> str:
        return f"<{type(self._target).__name__} as stage {self._stage!r} may read it>"
