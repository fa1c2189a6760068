"""Make `import torchvision` work where its compiled ops cannot load.

Why: PyPI's torchvision 0.28.0 is a CUDA build. Next to the CPU-only torch wheel
our machines use, its `_C.so` fails to load, and `import torchvision` then raises
`RuntimeError: operator torchvision::nms does not exist` (its meta registrations
call `torch.library.register_fake("torchvision::nms")` unconditionally).
transformers imports torchvision when it is installed, so diffusers and
torch-fidelity break with it.

What: before the first torchvision import, try to load the real extension. Only
if that fails, declare the two op schemas the import needs (nms, qnms) so the
Python package imports. Models and transforms then work; `torchvision.ops.nms`
and `torchvision.io` decoding do not (we decode with PIL). Where the extension
loads (a GPU machine with a matching CUDA torch) this does nothing.

For a user's own `import torchvision` in the project's venv, `make setup` writes a .pth
file that calls `install_import_hook()` at interpreter start: a finder that runs the
above just before the first torchvision import, in any script. It costs nothing until
then (no torch import at start-up).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_state: dict[str, str] = {}


def ensure_torchvision_importable() -> str:
    """Idempotent. Returns "native", "schemas-only" or "absent" (torchvision not installed)."""
    if "mode" in _state:
        return _state["mode"]
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        _state["mode"] = "absent"
        return "absent"
    package_dir = Path(spec.origin).parent
    ext = next(iter(sorted(package_dir.glob("_C*.so"))), None) or next(
        iter(sorted(package_dir.glob("_C*.pyd"))), None
    )
    try:
        if ext is None:
            raise OSError("no compiled extension")
        torch.ops.load_library(str(ext))
        _state["mode"] = "native"
    except (OSError, RuntimeError):
        for name, schema in _SCHEMAS.items():
            if not hasattr(torch.ops.torchvision, name):
                torch.library.define(f"torchvision::{name}", schema)
        _state["mode"] = "schemas-only"
    return _state["mode"]


# What torchvision.ops.nms and the other compiled ops say here, instead of torchvision's
# "incompatible versions" advice, which does not apply (the versions match; the build is
# CUDA's): where the explanation is.
OPS_MISSING = (
    "torchvision's compiled ops (torchvision.ops.nms, roi_align, ...) cannot load in this "
    "venv: the locked torchvision is PyPI's CUDA build beside the CPU torch wheel, the only "
    "pair this machine can install (defectgen's detectors do without them). See README.md, "
    "'Taking the expanded dataset away'; on a GPU machine `containers/install-locked.sh "
    "cu128` installs the matching CUDA pair."
)


def _explained(has_ops):
    """torchvision.extension's _assert_has_ops, raising OPS_MISSING."""

    def _assert_has_ops():
        if not has_ops():
            raise RuntimeError(OPS_MISSING)

    return _assert_has_ops


class _BeforeTorchvision:
    """A sys.meta_path finder that prepares torch's op registry the first time
    torchvision is imported, then steps aside (it finds nothing itself); where the
    compiled ops cannot load, it leaves _ExplainMissingOps in its place."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            if ensure_torchvision_importable() == "schemas-only":
                sys.meta_path.insert(0, _ExplainMissingOps())
        return None


class _ExplainMissingOps:
    """Loads torchvision.extension, then has its _assert_has_ops raise OPS_MISSING
    (before torchvision.ops imports it by name); steps aside after."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision.extension":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                module._assert_has_ops = _explained(module._has_ops)

            spec.loader.exec_module = exec_module
        return spec


def install_import_hook() -> None:
    """Run ensure_torchvision_importable() before the first `import torchvision` (the
    venv's .pth calls this at start-up)."""
    if "torchvision" not in sys.modules and not any(
        isinstance(f, _BeforeTorchvision) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _BeforeTorchvision())
