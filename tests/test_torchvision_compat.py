import subprocess
import sys


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
