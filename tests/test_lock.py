"""The lock (requirements.lock) against pyproject.toml and against the installed venv."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(text: str) -> dict[str, str]:
    """{package: version} from a pip requirements file with `name==version \\` entries."""
    return {canon(m[1]): m[2] for line in text.splitlines() if (m := PIN.match(line))}


def declared() -> list[Requirement]:
    """Every requirement pyproject.toml declares: dependencies, the dev extra, the build
    backend, and constraints.txt's torch pins."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lines = [
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["dev"],
        *project["build-system"]["requires"],
    ]
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            lines.append(line)
    return [Requirement(line) for line in lines]


def disagreements(requirements: list[Requirement], pins: dict[str, str]) -> list[str]:
    problems = []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate():
            continue
        version = pins.get(canon(req.name))
        if version is None:
            problems.append(f"{req.name}: declared ({req}) but not in the lock")
        elif not req.specifier.contains(Version(version), prereleases=True):
            problems.append(f"{req.name}: lock has {version}, outside {req.specifier}")
    return problems


def test_every_declared_requirement_is_locked_inside_its_range():
    pins = lock_pins((ROOT / "requirements.lock").read_text())
    problems = disagreements(declared(), pins)
    assert not problems, "pyproject.toml and requirements.lock disagree; run `make lock`:\n" + (
        "\n".join(problems)
    )


def test_the_check_catches_a_drifted_or_missing_pin():
    reqs = [Requirement("peft>=0.17,<0.22"), Requirement("kfp>=2.17,<2.18")]
    assert disagreements(reqs, {"peft": "0.21.2", "kfp": "2.17.3"}) == []
    assert disagreements(reqs, {"peft": "0.22.0", "kfp": "2.17.3"}) == [
        "peft: lock has 0.22.0, outside <0.22,>=0.17"
    ]
    assert disagreements(reqs, {"peft": "0.21.2"}) == [
        "kfp: declared (kfp<2.18,>=2.17) but not in the lock"
    ]


def test_every_lock_entry_is_pinned_and_hashed():
    text = (ROOT / "requirements.lock").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 3)[3])
    assert len(entries) == len(lock_pins(text)) > 100
    for entry in entries:
        assert PIN.match(entry), entry.splitlines()[0]
        assert "--hash=sha256:" in entry, f"no hash: {entry.splitlines()[0]}"


@pytest.mark.skipif(
    sys.prefix == sys.base_prefix, reason="not in a virtual environment made by `make setup`"
)
def test_the_venv_holds_exactly_the_lock():
    pins = lock_pins((ROOT / "requirements.lock").read_text())
    installed = {
        canon(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions()
        if canon(dist.metadata["Name"]) not in {"pip", "defectgen"}
    }
    extra = sorted(set(installed) - set(pins))
    missing = sorted(set(pins) - set(installed))
    changed = sorted(k for k in set(pins) & set(installed) if pins[k] != installed[k])
    assert (extra, missing, changed) == ([], [], []), (
        f"installed but not locked: {extra}; locked but not installed: {missing}; "
        f"other versions: {[(k, installed[k], pins[k]) for k in changed]}. "
        "Recreate the venv: rm -rf .venv && make setup"
    )


def test_the_installer_is_the_pinned_hashed_uv_the_makefile_names():
    """`make setup` installs the lock with uv, itself installed from tools.lock: one exact
    version, the one UV_VERSION names, with a hash for each platform's wheel."""
    makefile = (ROOT / "Makefile").read_text()
    version = re.search(r"^UV_VERSION := (\S+)$", makefile, re.M)[1]
    text = (ROOT / "tools.lock").read_text()
    assert lock_pins(text) == {"uv": version}
    assert text.count("--hash=sha256:") >= 5  # Linux, macOS and Windows wheels, the sdist
    assert "--require-hashes -r tools.lock" in makefile
    assert "--require-hashes -r requirements.lock" in makefile
