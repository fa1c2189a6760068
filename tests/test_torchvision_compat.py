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
