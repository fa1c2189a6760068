"""Shared fixtures: small real image datasets written with PIL into tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # thread each (before numpy and
        os.environ.setdefault(var, "1")  # torch load), inherited by the e2e subprocesses

import numpy as np
import pytest
import yaml
from PIL import Image

from defectgen._torchvision_compat import ensure_torchvision_importable
from defectgen.config import Params, parse_params

ensure_torchvision_importable()  # test modules import diffusers directly (the package does
# it in the modules that import transformers, diffusers or torchvision)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "true")


# The longest files, longest first (`--durations` of a fresh-clone `make test`, 2 cores):
# pytest-xdist hands whole files to the workers in collection order (the Makefile turns
# off its reordering by test count, which put these one-test files last), so the longest
# start first and the short ones fill in beside them.
LONGEST_FILES = (
    "test_dvc_pipeline.py",  # ~330 s
    "test_kfp_local.py",  # ~240 s
    "test_benchmarks.py",  # ~150 s
    "test_real_data.py",  # ~90 s
    "test_kfp_exit_handler.py",  # ~65 s
    "test_expansion.py",  # ~65 s
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first (above), then files whose every test is `slow` (whole
    pipelines), then files with some slow tests, then the rest."""
    slow: dict[Path, list[bool]] = {}
    for item in items:
        slow.setdefault(item.path, []).append(item.get_closest_marker("slow") is not None)
    rank = {
        path: LONGEST_FILES.index(path.name) if path.name in LONGEST_FILES
        else len(LONGEST_FILES) + (0 if all(marks) else 1 if any(marks) else 2)
        for path, marks in slow.items()
    }  # fmt: skip
    items.sort(key=lambda item: rank[item.path])  # stable: the file order within a rank


# The checkout's own stores: a test writes only into temp folders, never here (the demo's
# MLflow store and artifacts, DVC's data and cache, metrics and plots)
CHECKOUT_STORES = ("mlflow.db", "mlruns", "mlartifacts", "data", "metrics", ".dvc/cache",
                   "dvc_plots")  # fmt: skip
STORES_BEFORE = pytest.StashKey[dict]()


def store_state() -> dict[str, tuple[int, int]]:
    """Every file under the checkout's stores: its size and modification time."""
    state = {}
    for name in CHECKOUT_STORES:
        root = REPO / name
        files = [root] if root.is_file() else sorted(root.rglob("*")) if root.is_dir() else []
        for f in files:
            if f.is_file():
                st = f.stat()
                state[str(f.relative_to(REPO))] = (st.st_size, st.st_mtime_ns)
    return state


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controlling process (xdist) or the only one
        config.stash[STORES_BEFORE] = store_state()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite fails when it changed the checkout's stores (`make test` must leave the
    user's MLflow runs, DVC data and metrics as they were)."""
    before = session.config.stash.get(STORES_BEFORE, None)
    if before is None:
        return
    after = store_state()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        print(f"\nThe tests changed the checkout's stores ({len(changed)} files, e.g. "
              f"{changed[:5]}): a test must write only into its temp folders")  # fmt: skip
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def shared_data(name: str) -> Path:
    """A dataset from ../shared/data; skipped (with the reason) only where it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (the real steel data lives beside the repo in CI)")
    return path


def texture(seed: int, size: tuple[int, int] = (40, 40), rgb: bool = False) -> np.ndarray:
    """A distinct random texture per seed: (H, W) or (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if rgb else (size[1], size[0])
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def save(pixels: np.ndarray, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **kw)
    return path


def blob_mask(seed: int, size: tuple[int, int] = (40, 40)) -> np.ndarray:
    """A {0, 255} mask with one rectangle placed by the seed."""
    rng = np.random.default_rng(seed + 10_000)
    w, h = size
    m = np.zeros((h, w), dtype=np.uint8)
    x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    m[y0 : y0 + h // 3, x0 : x0 + w // 3] = 255
    return m


def run_stage(name: str, params: Params, **inputs) -> dict[str, float]:
    """A stage's run as the runner calls it (Stage.runner: the declared resume key),
    without MLflow."""
    from defectgen.declarations import get_stage

    return get_stage(name).runner(params, **inputs)


def make_params(layout: str = "folders", root: Path | None = None, **sections) -> Params:
    """Params for tests: a data section for `layout`/`root` plus any section overrides."""
    data = {"name": "fixture", "layout": layout, "root": str(root) if root else None}
    data.update(sections.pop("data", {}))
    raw = {
        "seed": sections.pop("seed", 7),
        "data": data,
        "ingest": {"min_images_per_class": 1, **sections.pop("ingest", {})},
        "tracking": {"enabled": False},
    }
    raw.update(sections)
    return parse_params(raw, "test-params")


def stripes(seed: int, vertical: bool, size: int = 32) -> np.ndarray:
    """Class-typical images: stripes across or down, random phase, period and noise."""
    rng = np.random.default_rng(seed)
    axis = np.arange(size)
    wave = 127 + 100 * np.sin(2 * np.pi * (axis + rng.uniform(0, 8)) / rng.uniform(5, 9))
    img = np.tile(wave, (size, 1)) if vertical else np.tile(wave[:, None], (1, size))
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)


def toy_repo_params(name: str, root: str, *, images_per_class: int) -> dict:
    """The repo's params.yaml on a folders dataset, with the DAG at toy length: a few
    steps per training phase, a few images per class, a 2-cell sweep, one classifier
    epoch (for the dvc and kfp.local runs)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update({"name": name, "layout": "folders", "root": root})
    params["ingest"]["min_images_per_class"] = 2
    # val: two halves, one for the sweep, one for the gate (about 2-3 images each per class)
    params["preprocess"]["split"] = {"train": 0.5, "val": 0.4, "test": 0.1}
    # a few-shot share of each toy class (the demo's 50 per class would take all of it)
    params["preprocess"]["subset"] = {"alpha": 0.4, "per_class": None}
    params["base"].update({"vae_steps": 3, "unet_steps": 3, "batch_size": 8})
    params["finetune"]["ti"]["steps"] = params["finetune"]["lora"]["steps"] = 2
    params["generate"].update({"images_per_class": images_per_class, "steps": 4})
    params["sweep"].update({"strengths": [0.3, 0.6], "guidances": [2.0], "probe_images": 3})
    params["train"].update({"models": ["resnet18"], "seeds": [0], "steps": 2, "evals": 1})
    params["detect"].update({"seeds": [0], "steps": 2, "evals": 1})
    return params


@pytest.fixture
def folders_dataset(tmp_path: Path) -> Path:
    """root/<class>/*.png: 3 classes x 12 distinct images."""
    root = tmp_path / "folders"
    for ci, cls in enumerate(["crack", "dent", "scratch"]):
        for i in range(12):
            save(texture(ci * 100 + i), root / cls / f"{cls}_{i}.png")
    return root


@pytest.fixture
def mask_dataset(tmp_path: Path) -> Path:
    """images/<Cls>_<n>.bmp + masks/<Cls>_<n>.png, labels from the file-name prefix."""
    root = tmp_path / "masks_ds"
    for ci, cls in enumerate(["In", "Pa"]):
        for i in range(1, 9):
            save(texture(ci * 100 + i), root / "images" / f"{cls}_{i}.bmp")
            save(blob_mask(ci * 100 + i), root / "masks" / f"{cls}_{i}.png")
    return root
