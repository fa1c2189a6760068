import shutil
from pathlib import Path

import pytest
import yaml

from defectgen.config import Params, apply_profile, load_params, parse_params
from defectgen.errors import ConfigError
from tests.conftest import REPO


def _base() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_load_and_hash_is_stable():
    params = load_params(REPO / "params.yaml")
    assert params.data.layout == "elpv"
    assert params.preprocess.split.train == pytest.approx(0.8)
    assert params.section_hash() == load_params(REPO / "params.yaml").section_hash()
    assert params.section_hash("data") != params.section_hash("preprocess")


def test_unknown_key_names_key_and_allowed_keys():
    raw = _base()
    raw["preprocess"]["imagesize"] = 64
    with pytest.raises(ConfigError) as err:
        parse_params(raw, "p.yaml")
    msg = str(err.value)
    assert "preprocess.imagesize" in msg and "unknown key" in msg
    assert "image_size" in msg  # the allowed keys are listed


def test_wrong_type_names_key_and_value():
    raw = _base()
    raw["preprocess"]["image_size"] = "big"
    with pytest.raises(ConfigError) as err:
        parse_params(raw, "p.yaml")
    assert "preprocess.image_size = 'big'" in str(err.value)
    assert "integer" in str(err.value)


def test_wrong_choice_lists_allowed_values():
    raw = _base()
    raw["data"]["layout"] = "kitti"
    with pytest.raises(ConfigError) as err:
        parse_params(raw, "p.yaml")
    msg = str(err.value)
    assert "data.layout = 'kitti'" in msg
    for allowed in ("folders", "image_mask", "voc", "coco", "yolo", "elpv"):
        assert allowed in msg


@pytest.mark.parametrize(
    ("section", "key", "value", "fragment"),
    [
        ("split", "train", 0.9, "sum to"),
        ("subset", "alpha", 0.4, "exactly one of alpha"),  # beside params.yaml's per_class
    ],
)
def test_cross_field_rules(section, key, value, fragment):
    raw = _base()
    raw["preprocess"][section][key] = value
    with pytest.raises(ConfigError, match=fragment):
        parse_params(raw, "p.yaml")


def test_tiny_attention_heads_must_divide_every_unet_width():
    raw = _base()
    raw["model"]["tiny"]["unet_heads"] = 3  # 32 and 64 channels
    with pytest.raises(ConfigError, match=r"unet_channels \[32, 64\] must each be divisible"):
        parse_params(raw, "p.yaml")
    raw["model"]["tiny"]["unet_heads"] = 4
    assert parse_params(raw, "p.yaml").model.tiny.unet_heads == 4


def test_layout_without_root_and_bad_pattern_and_bins():
    raw = _base()
    raw["data"].update(layout="folders", root=None)
    with pytest.raises(ConfigError, match="data.root is required"):
        parse_params(raw)
    raw = _base()
    raw["data"].update(layout="folders", root="x", label_from="prefix", label_pattern="(.+)_\\d+")
    with pytest.raises(ConfigError, match=r"\(\?P<label>"):
        parse_params(raw)
    raw = _base()
    raw["data"]["elpv_bins"] = [0.7, 0.3]
    with pytest.raises(ConfigError, match="strictly increasing"):
        parse_params(raw)
    raw = _base()
    raw["model"] = {"profile": "sd15"}
    with pytest.raises(ConfigError, match="model.base is required"):
        parse_params(raw)


def test_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_sd_saliency_profile_is_a_few_overrides_of_params_yaml(tmp_path: Path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_text()
    params = apply_profile(tmp_path / "params.yaml", REPO / "profiles" / "sd-saliency-900.yaml")
    after = (tmp_path / "params.yaml").read_text()

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    a, b = dict(leaves(yaml.safe_load(before))), dict(leaves(yaml.safe_load(after)))
    assert a.keys() == b.keys()
    changed = {k for k in a if a[k] != b[k]}
    assert changed == {
        "data.name", "data.layout", "data.root", "data.label_from", "data.masks_required",
        "preprocess.split.train", "preprocess.split.val", "preprocess.split.test",
        "preprocess.subset.alpha", "masks.per_class", "masks.ddpm.size", "masks.ddpm.channels",
        "masks.ddpm.steps", "masks.ddpm.batch_size", "masks.ddpm.sample_steps", "pairs.sae",
        "pairs.sff.enabled", "preprocess.subset.per_class",
    }  # fmt: skip
    assert params == load_params(tmp_path / "params.yaml")
    # params.yaml's comments survive: every comment line of the original is still there
    comments = [line for line in before.splitlines() if line.lstrip().startswith("#")]
    assert comments and all(line in after for line in comments)
    assert len((REPO / "profiles" / "sd-saliency-900.yaml").read_text().splitlines()) < 40
    split = params.preprocess.split
    assert 5 <= split.test / split.train <= 5.5  # DefFiller's 1:5 train:test, about
    assert (REPO / params.data.root / "masks").is_dir()  # ../shared beside the repo


def test_a_bad_profile_changes_nothing(tmp_path: Path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match="stepz"):
        apply_profile(tmp_path / "params.yaml", bad)
    bad.write_text("preprocess:\n  split: {train: 0.9, val: 0.9, test: 0.1}\n")
    with pytest.raises(ConfigError):
        apply_profile(tmp_path / "params.yaml", bad)
    assert (tmp_path / "params.yaml").read_text() == before


@pytest.mark.parametrize("section", ["train", "segment"])
def test_epochs_and_listed_controls_are_refused_with_the_replacement(section):
    raw = _base()
    raw[section]["epochs"] = 8
    with pytest.raises(ConfigError, match=rf"{section}.epochs was replaced by {section}.steps"):
        parse_params(raw, "p.yaml")
    raw = _base()
    raw[section]["conditions"] = ["real", "real+ungated"]
    with pytest.raises(ConfigError, match=r"list only the synthetic arms; real and the matched"):
        parse_params(raw, "p.yaml")


def test_a_normal_class_is_never_synthesised():
    raw = _base()
    raw["data"]["normal_classes"] = ["ok"]
    params = parse_params(raw)
    assert params.synthesised(["crack", "ok", "pit"]) == ["crack", "pit"]
    raw["finetune"] = {"classes": ["ok", "crack"]}
    with pytest.raises(ConfigError, match=r"finetune.classes lists \['ok'\].*defect-free"):
        parse_params(raw)


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and value and not key.endswith("per_class"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_params_yaml_holds_every_parameter_at_its_one_default():
    """params.yaml lists every parameter, each at the config's default (data, which names
    the demo's dataset, aside): one default per parameter, so a key left out of a user's
    params file means what params.yaml says."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    given = dict(_leaves(load_params(REPO / "params.yaml").model_dump(mode="json")))
    default = dict(_leaves(Params(data=raw["data"]).model_dump(mode="json")))
    assert given.keys() == default.keys() == dict(_leaves(raw)).keys()
    differ = {k: (given[k], default[k]) for k in given if given[k] != default[k]}
    assert not differ, f"params.yaml vs config default: {differ}"


@pytest.mark.parametrize(
    "profile", sorted((REPO / "profiles").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_profile_applies_to_params_yaml(tmp_path: Path, profile: Path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    params = apply_profile(tmp_path / "params.yaml", profile)
    over = dict(_leaves(yaml.safe_load(profile.read_text(encoding="utf-8"))))
    after = dict(_leaves(params.model_dump(mode="json")))
    assert all(after[k] == v for k, v in over.items() if k in after), profile.name


def test_the_few_shot_set_is_given_by_whichever_of_alpha_or_per_class_is_set():
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert raw["preprocess"]["subset"] == {"alpha": None, "per_class": 50}  # the default
    raw["preprocess"]["subset"] = {"alpha": 0.4}  # a user's params file names one
    subset = parse_params(raw).preprocess.subset
    assert (subset.alpha, subset.per_class) == (0.4, None)
    raw["preprocess"]["subset"] = {"alpha": 0.4, "per_class": 5}
    with pytest.raises(ConfigError, match="set exactly one of alpha"):
        parse_params(raw)


def test_a_profile_naming_alpha_replaces_the_default_per_class(tmp_path: Path):
    """Through apply_profile, as a user's profile goes: params.yaml's per_class 50 is
    unset by an override that names alpha alone."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "p.yaml").write_text("preprocess: {subset: {alpha: 0.4}}\n")
    subset = apply_profile(tmp_path / "params.yaml", tmp_path / "p.yaml").preprocess.subset
    assert (subset.alpha, subset.per_class) == (0.4, None)
    assert load_params(tmp_path / "params.yaml").preprocess.subset == subset
