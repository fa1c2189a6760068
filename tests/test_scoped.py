"""A stage reads only the params keys it declares: the view (defectgen.scoped) hands out
declared keys and refuses any other, a KFP task is handed those keys alone (task_params),
and the static scan (pipelines.params_read) finds the keys a piece of code reads."""

from __future__ import annotations

import dataclasses
import json
import pickle
import textwrap

import pytest

from defectgen.config import ALL, GateConfig, GenerateConfig, LoraConfig
from defectgen.declarations import STAGES, get_stage
from defectgen.errors import ConfigError
from defectgen.scoped import UndeclaredRead, from_task_params, scoped, task_params
from pipelines import params_read
from tests.conftest import make_params


def test_a_view_gives_declared_keys_and_refuses_the_rest(tmp_path):
    params = make_params("folders", tmp_path, gate={"margin": 0.05})
    view = scoped(params, ("seed", "gate.margin", "generate"), "demo")
    assert view.seed == 7 and view.gate.margin == 0.05
    assert isinstance(view.gate, GateConfig) and isinstance(view.generate, GenerateConfig)
    assert view.generate is params.generate  # a declared section is handed out whole
    with pytest.raises(UndeclaredRead, match=r"stage 'demo' read params key 'gate\.max_ratio'"):
        _ = view.gate.max_ratio
    with pytest.raises(UndeclaredRead, match="'train'"):
        _ = view.train
    with pytest.raises(UndeclaredRead, match="'gate'"):
        view.gate.model_dump()  # every key of a section only partly declared
    assert view.section_hash("gate.margin") == params.section_hash("gate.margin")
    with pytest.raises(UndeclaredRead, match=r"'\*'"):
        view.section_hash()  # every parameter
    with pytest.raises(TypeError):
        view.seed = 8
    assert scoped(params, (ALL,), "report") is params


def test_a_task_is_handed_its_stage_s_keys_and_reads_them_as_the_file_gives_them(tmp_path):
    """What a KFP task reads back from its params input holds its stage's keys with the
    file's values and types, so its resume key and MLflow params are the CLI's."""
    params = make_params(
        "folders", tmp_path, finetune={"lora": {"steps": 3, "lr": 1e-4, "rank": 2}}
    )
    for stage in STAGES:
        handed = from_task_params(task_params(params, stage.reads), stage.name)
        assert handed.keyed(*stage.reads) == params.keyed(*stage.reads), stage.name
        assert stage.params_hash(handed) == stage.params_hash(params), stage.name
        assert handed.data.name == "fixture" and handed.tracking == params.tracking
    finetune = from_task_params(task_params(params, get_stage("finetune").reads), "finetune")
    assert isinstance(finetune.finetune.lora, LoraConfig) and finetune.finetune.lora.rank == 2
    ingest = from_task_params(task_params(params, get_stage("ingest").reads), "ingest")
    assert ingest.data.root == tmp_path  # a Path again, not the JSON string
    assert from_task_params(task_params(params, (ALL,)), "report").given == (ALL,)


def test_a_task_s_params_refuse_the_keys_it_was_not_handed(tmp_path):
    params = make_params("folders", tmp_path, gate={"margin": 0.05})
    handed = from_task_params(task_params(params, ("seed", "gate.margin")), "demo")
    assert handed.gate.margin == 0.05 and handed.seed == 7
    assert handed.carries("gate.margin") and not handed.carries("gate")
    with pytest.raises(KeyError, match="carry only data.name, gate.margin, seed, tracking"):
        handed.keyed("gate")  # the other gate keys hold defaults, not the file's values
    with pytest.raises(KeyError, match=r"not \*"):
        handed.section_hash()  # every parameter: the exit handler's, not a stage task's
    view = scoped(handed, ("seed", "gate.margin"), "demo")
    with pytest.raises(UndeclaredRead, match="'gate.max_ratio'"):
        _ = view.gate.max_ratio


def test_a_task_s_params_are_checked_key_by_key_and_narrowed_to_its_class(tmp_path):
    with pytest.raises(ConfigError, match="seed: Input should be greater than or equal to 0"):
        from_task_params(json.dumps({"seed": -1}), "demo component params")
    with pytest.raises(ConfigError, match="gate.margin: Input should be a valid number"):
        from_task_params(json.dumps({"gate.margin": "wide"}), "demo component params")
    with pytest.raises(ConfigError, match="no key 'gate.nope'"):
        from_task_params(json.dumps({"gate.nope": 1}), "demo component params")
    with pytest.raises(ConfigError, match="not the JSON"):
        from_task_params("seed: [", "demo component params")
    params = make_params("folders", tmp_path, finetune={"classes": ["a", "b"]})
    text = task_params(params, get_stage("finetune").reads)
    assert from_task_params(text, "finetune", only_class="b").finetune.classes == ["b"]
    assert from_task_params(text, "finetune").finetune.classes == ["a", "b"]


def test_a_method_of_a_params_class_reads_through_the_view(tmp_path):
    params = make_params("folders", tmp_path, generate={"per_class": {"a": {"strength": 0.2}}})
    keys = ("generate.strength", "generate.guidance", "generate.per_class")
    assert scoped(params, keys, "s").generate.settings("a") == (0.2, params.generate.guidance)
    with pytest.raises(UndeclaredRead, match="generate.per_class"):
        scoped(params, keys[:2], "s").generate.settings("a")
    view = scoped(params, ("finetune.classes",), "s")
    with pytest.raises(UndeclaredRead, match="data"):  # synthesised reads data.normal_classes
        view.synthesised(["a"])


def test_a_pickled_view_keeps_its_limits(tmp_path):
    view = pickle.loads(pickle.dumps(scoped(make_params("folders", tmp_path), ("seed",), "s")))
    assert view.seed == 7
    with pytest.raises(UndeclaredRead):
        _ = view.gate


def test_a_stage_that_reads_an_undeclared_key_fails(tmp_path, folders_dataset):
    """ingest reads the data section: declared without it, its run stops at the read."""
    params = make_params("folders", folders_dataset)
    ingest = dataclasses.replace(get_stage("ingest"), reads=("ingest",))
    with pytest.raises(UndeclaredRead, match="stage 'ingest' read params key 'data"):
        ingest.runner(params, out_dir=tmp_path / "ingested")
    assert get_stage("ingest").runner(params, out_dir=tmp_path / "ingested")["n_images"] > 0


def _read(tmp_path, source: str) -> set[str]:
    path = tmp_path / "code.py"
    path.write_text(textwrap.dedent(source))
    return params_read.read_by([path])


def test_the_scan_follows_aliases_annotations_and_methods(tmp_path):
    found = _read(
        tmp_path,
        """
        from defectgen.config import GateConfig, Params

        def floors(cfg: GateConfig):
            return cfg.max_ratio

        class Judge:
            def __init__(self, params):
                self.cfg = params.gate

            def margin(self):
                return self.cfg.margin

        def run(params: Params):
            cfg, gen = params.gate, params.generate
            floors(cfg)
            return gen.settings("a"), params.seed, params.train.primary
        """,
    )
    assert found == {
        "gate.max_ratio", "gate.margin", "generate.strength", "generate.guidance",
        "generate.per_class", "seed", "train.primary",
    }  # fmt: skip


def test_the_scan_counts_what_it_cannot_follow_as_read_whole(tmp_path):
    found = _read(
        tmp_path,
        """
        def helper(cfg):
            return cfg.margin

        def run(params):
            helper(params.gate)         # unannotated: the scan cannot see which keys
            keep = [params.classical]   # stored where it is not followed
            return keep, params.section_hash()
        """,
    )
    assert found == {ALL}
    found = _read(
        tmp_path,
        """
        def helper(cfg):
            return cfg.margin

        def run(params):
            return helper(params.gate), [params.classical]
        """,
    )
    assert found == {"gate", "classical"}


def test_a_helper_counts_only_for_a_section_the_code_takes_from_params(tmp_path):
    """An annotated helper in the closure reads nothing for code that never hands it its
    section; every key of a section read stands for the section."""
    found = _read(
        tmp_path,
        """
        from defectgen.config import CopyPasteConfig

        def paste(cfg: CopyPasteConfig):
            return cfg.margin

        def run(params):
            return params.seed
        """,
    )
    assert found == {"seed"}
    keys = " + ".join(f"params.tracking.{k}" for k in ("enabled", "experiment"))
    assert _read(tmp_path, f"def run(params):\n    return {keys}\n") == {"tracking"}
