import subprocess
import sys

from defectgen import _torchvision_compat as _compat


def test_torchvision_models_import_and_run_on_this_torch():
    # A fresh interpreter: the shim must act before the first torchvision import.
    code = (
        "from defectgen._torchvision_compat import ensure_torchvision_importable as e\n"
        "mode = e()\n"
        "import torch, torchvision\n"
        "m = torchvision.models.resnet18(num_classes=3).eval()\n"
        "assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 3)\n"
        "import transformers, torch_fidelity\n"
        "print(mode)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("native", "schemas-only")


def test_a_users_own_import_torchvision_works_in_the_venv():
    """A script that never imports defectgen: the venv's .pth (make setup) prepares torch
    before torchvision loads, where its compiled ops cannot (PyPI's CUDA build beside the
    CPU torch). Nothing heavy is imported at start-up."""
    startup = subprocess.run(
        [sys.executable, "-c", "import sys; print('torch' in sys.modules)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert startup.stdout.strip() == "False"
    code = (
        "import torch, torchvision\n"
        "m = torchvision.models.resnet18(num_classes=2).eval()\n"
        "print(tuple(m(torch.zeros(1, 3, 32, 32)).shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(1, 2)"


def test_torchvision_s_missing_ops_say_where_the_explanation_is():
    """In the CPU venv torchvision.ops.nms cannot run; its error names the README section
    that explains why, instead of torchvision's advice to match versions (they match).
    Where the compiled ops load (a CUDA torch), nms runs."""
    code = (
        "from defectgen._torchvision_compat import ensure_torchvision_importable as e\n"
        "import torch, torchvision\n"
        "try:\n"
        "    torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)\n"
        "    print(e(), 'ran')\n"
        "except RuntimeError as exc:\n"
        "    print(e(), exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    mode, said = out.stdout.strip().split(" ", 1)
    expected = {"native": "ran", "schemas-only": _compat.OPS_MISSING}
    assert said == expected[mode]
    assert "README.md, 'Taking the expanded dataset away'" in _compat.OPS_MISSING
