import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from defectgen.cli import main
from tests.conftest import REPO


def _params(tmp_path: Path, root: Path, **data) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update({"name": "cli", "layout": "folders", "root": str(root), **data})
    raw["ingest"]["min_images_per_class"] = 2
    raw["tracking"]["enabled"] = False
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_help_lists_the_stages():
    out = subprocess.run(
        [sys.executable, "-m", "defectgen.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    from defectgen.declarations import STAGES

    words = " ".join(out.split())
    for stage in STAGES:  # every stage a subcommand, with its declared help
        assert stage.name in words and " ".join(stage.help.split())[:40] in words, stage.name
    assert "check-params" in out


def test_each_stage_command_takes_its_declared_inputs():
    from defectgen.cli import build_parser
    from defectgen.declarations import STAGES

    for stage in STAGES:
        args = ["--params", "p.yaml", "--out", "o"]
        args += [a for name, _, _ in stage.inputs for a in (f"--{name}", f"/in/{name}")]
        parsed = build_parser().parse_args([stage.name, *args])
        for name, _, _ in stage.inputs:
            assert str(getattr(parsed, name)) == f"/in/{name}", (stage.name, name)


def test_stages_through_the_cli(folders_dataset: Path, tmp_path: Path, capsys):
    params = _params(tmp_path, folders_dataset)
    assert (
        main(
            [
                "ingest",
                "--params",
                str(params),
                "--out",
                str(tmp_path / "ing"),
                "--metrics",
                str(tmp_path / "m" / "ingest.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "m" / "ingest.json").read_text())["n_images"] == 36
    assert (
        main(
            [
                "preprocess",
                "--params",
                str(params),
                "--ingested",
                str(tmp_path / "ing"),
                "--out",
                str(tmp_path / "pre"),
            ]
        )
        == 0
    )
    assert "defectgen preprocess: done" in capsys.readouterr().out


def test_bad_params_fail_before_work_without_traceback(folders_dataset: Path, tmp_path: Path):
    params = _params(tmp_path, folders_dataset, layout="kitti")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "defectgen.cli",
            "ingest",
            "--params",
            str(params),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "data.layout = 'kitti'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_bad_data_fails_with_a_message(tmp_path: Path):
    params = _params(tmp_path, tmp_path / "does-not-exist")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "defectgen.cli",
            "ingest",
            "--params",
            str(params),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "does-not-exist" in proc.stderr and "Traceback" not in proc.stderr


_ENTRY = """
import atexit, os, sys, threading, time
from pathlib import Path
from defectgen import cli

out = Path(sys.argv.pop(1))
atexit.register(lambda: (out / "atexit").write_text("ran"))


class Teardown:  # a module global: finalised by the interpreter's teardown only
    def __del__(self):
        os.close(os.open(out / "teardown", os.O_CREAT | os.O_WRONLY))


kept = Teardown()
if sys.argv[1] == "thread":
    def late():
        time.sleep(1)
        (out / "thread").write_text("done")

    threading.Thread(target=late).start()
    sys.argv.pop(1)
cli.entry()
"""


def _entry(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    out = tmp_path / name
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # block-buffered
    return subprocess.run([sys.executable, "-c", _ENTRY, str(out), *args],
                          capture_output=True, text=True, env=env)  # fmt: skip


def test_the_console_script_skips_only_the_teardown(folders_dataset: Path, tmp_path: Path):
    """`defectgen` (cli.entry) leaves a finished process without the interpreter's
    teardown, but keeps what a normal exit does that matters: atexit handlers run,
    buffered output is written, a running non-daemon thread is waited for, and a failure
    exits normally with its code."""
    good = _params(tmp_path, folders_dataset)
    ok = _entry(tmp_path, "ok", "check-params", "--params", str(good))
    assert ok.returncode == 0, ok.stderr
    assert f"{good}: ok (params hash" in ok.stdout
    assert (tmp_path / "ok" / "atexit").exists()
    assert not (tmp_path / "ok" / "teardown").exists()

    waits = _entry(tmp_path, "thread", "thread", "check-params", "--params", str(good))
    assert waits.returncode == 0, waits.stderr
    assert (tmp_path / "thread" / "thread").read_text() == "done"
    assert (tmp_path / "thread" / "atexit").exists()

    (tmp_path / "bad").mkdir()
    bad = _params(tmp_path / "bad", folders_dataset, layout="kitti")
    fails = _entry(tmp_path, "fails", "check-params", "--params", str(bad))
    assert fails.returncode == 2
    assert "data.layout = 'kitti'" in fails.stderr
    assert (tmp_path / "fails" / "atexit").exists() and (tmp_path / "fails" / "teardown").exists()


def test_schedule_says_what_it_needs_before_touching_a_cluster(tmp_path, capsys, monkeypatch):
    """No endpoint, a five-field cron, an endpoint that does not answer: one clear line each
    (exit 2). The calls against a live KFP API are not exercised here: no cluster."""
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    assert main(["schedule", "list"]) == 2
    assert "no KFP endpoint: pass --host URL or set $KF_PIPELINES_ENDPOINT" in (
        capsys.readouterr().err
    )
    assert main(["schedule", "create", "--cron", "0 2 * * *"]) == 2
    assert "KFP wants six fields, seconds first" in capsys.readouterr().err
    missing = str(tmp_path / "cluster.yaml")
    assert main(["schedule", "create", "--package", missing]) == 2
    assert f"{missing}: no compiled pipeline" in capsys.readouterr().err
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on 9
    package = str(REPO / "pipelines" / "build" / "defectgen.yaml")
    assert main(["schedule", "create", "--package", package]) == 2
    err = capsys.readouterr().err
    assert "KFP endpoint http://127.0.0.1:9: connect failed" in err and "Traceback" not in err


def test_long_stages_print_progress_lines_under_a_pipe(folders_dataset: Path, tmp_path: Path):
    """base and finetune say what they do, k of N and the time left, as plain lines on a
    piped stderr (what dvc repro, KFP logs and CI show)."""
    params = _params(tmp_path, folders_dataset)
    raw = yaml.safe_load(params.read_text())
    raw["preprocess"]["image_size"] = 32
    raw["base"].update({"batch_size": 4, "vae_steps": 4, "unet_steps": 3})
    raw["finetune"]["batch_size"] = 2
    raw["finetune"]["ti"]["steps"] = raw["finetune"]["lora"]["steps"] = 2
    params.write_text(yaml.safe_dump(raw))
    ing, pre = str(tmp_path / "ing"), str(tmp_path / "pre")
    assert main(["ingest", "--params", str(params), "--out", ing]) == 0
    assert main(["preprocess", "--params", str(params), "--ingested", ing, "--out", pre]) == 0
    cli = [sys.executable, "-c", "from defectgen import cli; cli.entry()"]
    common = ["--params", str(params), "--preprocessed", pre]
    base = subprocess.run([*cli, "base", *common, "--out", str(tmp_path / "base")],
                          capture_output=True, text=True)  # fmt: skip
    assert base.returncode == 0, base.stderr
    assert "[base VAE] 4 steps ..." in base.stderr
    assert "[base VAE] step 4/4, loss " in base.stderr and "[base UNet] step 3/3, " in base.stderr
    finetune = subprocess.run(
        [*cli, "finetune", *common, "--base", str(tmp_path / "base"), "--out",
         str(tmp_path / "ft")], capture_output=True, text=True,
    )  # fmt: skip
    assert finetune.returncode == 0, finetune.stderr
    lines = finetune.stderr.splitlines()
    assert "[finetune crack ti] step 2/2" in finetune.stderr
    done = [line for line in lines if line.startswith("[finetune] class ")]
    assert [line.split(" (")[0] for line in done] == [f"[finetune] class {k}/3" for k in (1, 2, 3)]
    assert "min left" in done[0] and "min left" not in done[-1]
    assert "\r" not in base.stderr + finetune.stderr  # lines, not a redrawn bar
