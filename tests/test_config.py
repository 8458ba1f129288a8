"""Configs are validated once, in the library: typed schemas, one-line errors naming key, value and what is allowed."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onfh_seg import config
from onfh_seg.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _schema_keys(schema) -> dict:
    """Required keys of a schema (optional fields, e.g. extra Lightning Trainer arguments, may be absent)."""
    return {key: (_schema_keys(tp) if dataclasses.is_dataclass(tp) else None)
            for key, (tp, meta) in config._fields(schema).items() if not meta.get("optional")}


def _yaml_keys(d: dict, schema) -> dict:
    fields = config._fields(schema)
    return {key: (_yaml_keys(value, fields[key][0]) if key in fields and dataclasses.is_dataclass(fields[key][0])
                  else None) for key, value in d.items()}


@pytest.mark.parametrize("name", sorted(config.SCHEMAS))
def test_schema_matches_yaml_and_defaults_validate(name: str) -> None:
    """Every YAML key has a typed schema field and vice versa; the defaults themselves pass."""
    schema = config.SCHEMAS[name]
    assert _yaml_keys(config.defaults(name), schema) == _schema_keys(schema)
    checked = config.validate(name, config.defaults(name), require=False)
    assert checked == config.defaults(name)


@pytest.mark.parametrize(
    "name, over, expected",
    [
        ("infer", {"tta": "flase"}, "onfh-infer: tta='flase' is not allowed: expected true or false"),
        ("infer", {"workers": "two"}, "onfh-infer: workers='two' is not allowed: expected an integer"),
        ("infer", {"workers": 0}, "onfh-infer: workers=0 is not allowed: expected a number >= 1"),
        ("infer", {"provder": "cpu"}, "onfh-infer: unknown key 'provder' (did you mean 'provider'?)"),
        ("infer", {"inptu": "x"}, "onfh-infer: unknown key 'inptu' (did you mean 'input'?)"),
        ("infer", {"qc": {"min_confidance": 0.5}},
         "onfh-infer: unknown key 'qc.min_confidance' (did you mean 'qc.min_confidence'?)"),
        ("infer", {"reference": "bone"},
         "onfh-infer: reference='bone' is not allowed: expected one of acetabulum, viable_head"),
        ("infer", {"qc": {"head_ml_range": [15]}},
         "onfh-infer: qc.head_ml_range=[15] is not allowed: expected a list of 2 (a number, a number)"),
        ("track", {"grid_mm": "fine"}, "onfh-track: grid_mm='fine' is not allowed: expected a number"),
        ("track", {"registration": {"iteratons": 5}},
         "onfh-track: unknown key 'registration.iteratons' (did you mean 'registration.iterations'?)"),
        ("export", {"force": "yes"}, "onfh-export: force='yes' is not allowed: expected true or false"),
        ("train", {"model": {"lr": "fast"}}, "onfh-train: model.lr='fast' is not allowed: expected a number"),
        ("train", {"trainer": {"max_stesp": 5}},
         "onfh-train: unknown key 'trainer.max_stesp' (did you mean 'trainer.max_steps'?)"),
        ("train", {"data": {"batch_size": 0}},
         "onfh-train: data.batch_size=0 is not allowed: expected a number >= 1"),
        ("train", {"data": {"stage": "medium"}},
         "onfh-train: data.stage='medium' is not allowed: expected one of fine, coarse"),
        ("train", {"model": {"net": {"act": "gelu"}}},
         "onfh-train: model.net.act='gelu' is not allowed: expected one of prelu, relu, leakyrelu"),
    ],
)
def test_bad_settings_are_one_line_errors(name: str, over: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.settings(name, over, require=False)
    assert str(err.value) == expected


def test_good_settings_merge_with_the_yaml_defaults() -> None:
    s = config.settings("infer", {"input": "a.nii.gz", "out_dir": "o", "tta": False, "qc": {"min_confidence": 0.5}})
    d = config.defaults("infer")
    assert s["tta"] is False and s["qc"]["min_confidence"] == 0.5
    assert s["qc"]["head_ml_range"] == d["qc"]["head_ml_range"] and s["provider"] == d["provider"]
    with pytest.raises(ConfigError, match="missing value for 'out_dir'"):
        config.settings("infer", {"input": "a.nii.gz"})


def test_numbers_given_for_text_settings_become_text() -> None:
    """Hydra reads out_dir=2024 as an int; the library gets the text it expects."""
    s = config.settings("infer", {"input": 123, "out_dir": 2024})
    assert s["input"] == "123" and s["out_dir"] == "2024"
    e = config.settings("eval", {"cohorts": {"in_style": 5, "out_of_style_a": [1, "b.csv"]}})
    assert e["cohorts"]["in_style"] == "5" and e["cohorts"]["out_of_style_a"] == ["1", "b.csv"]
    assert e["cohorts"]["out_of_style_b"] is None and e["workers"] == config.defaults("eval")["workers"]


def test_override_keys_are_checked_before_hydra() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'provder' \(did you mean 'provider'\?\)"):
        config.check_override_keys("infer", ["input=x", "+provder=cpu"])
    with pytest.raises(ConfigError, match="unknown key 'dicom.write_sg'"):
        config.check_override_keys("infer", ["dicom.write_sg=false"])
    # hydra keys, groups, free-form mappings and flags pass
    config.check_override_keys("infer", ["hydra.run.dir=.", "--help", "dicom.rules.include_patterns=[t1]"])
    config.check_override_keys("synth", ["+preset=demo", "acquisition.snr=[8,15]"], groups=["preset"])


def test_a_yaml_key_missing_from_the_schema_is_typed_by_its_default() -> None:
    allowed = config._allowed(config.InferSettings, {**config.defaults("infer"), "new_flag": False})
    assert allowed["new_flag"][0] is bool


def test_config_lookup_raises_an_exception_not_systemexit(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ONFH_SEG_CONFIGS", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="ONFH_SEG_CONFIGS"):
        config.config_dir()
    monkeypatch.delenv("ONFH_SEG_CONFIGS")
    assert (config.config_dir() / "infer.yaml").is_file()
    assert (config.default_model_dir() / "model.json").is_file()


def _cli(tool: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name(tool)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONFH_SEG_")}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_cli_bad_keys_and_values_are_one_line(tmp_path: Path) -> None:
    """As a user would type them: a typo'd value, a typo'd appended key, a word for a number."""
    base = [f"input={tmp_path}", f"out_dir={tmp_path / 'out'}"]
    for extra, expected in [
        ("tta=flase", "error: onfh-infer: tta='flase' is not allowed: expected true or false"),
        ("+provder=cpu", "error: onfh-infer: unknown key 'provder' (did you mean 'provider'?)"),
        ("workers=two", "error: onfh-infer: workers='two' is not allowed: expected an integer"),
    ]:
        res = _cli("onfh-infer", [*base, extra], tmp_path)
        assert res.returncode == 1, res.stderr
        assert res.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "out").exists()
    res = _cli("onfh-track", ["manifest=m.csv", "infer_dir=.", "out_dir=o", "wokers=2"], tmp_path)
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        "error: onfh-track: unknown key 'wokers' (did you mean 'workers'?)"]


def test_cli_version_prints_package_and_model_versions(tmp_path: Path) -> None:
    from onfh_seg.version import __version__

    res = _cli("onfh-infer", ["--version"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert __version__ in res.stdout and str(config.model_version()) in res.stdout
    assert config.model_version() is not None


def test_every_cli_names_itself_in_its_version_line(tmp_path: Path) -> None:
    res = _cli("onfh-pacs", ["--version"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("onfh-pacs ")


def test_library_modules_do_not_import_cli() -> None:
    import ast

    offenders = []
    for path in sorted((ROOT / "src" / "onfh_seg").rglob("*.py")):
        if "cli" in path.relative_to(ROOT / "src" / "onfh_seg").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n == "onfh_seg.cli" or n.startswith("onfh_seg.cli.") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_export_refuses_the_shipped_model_folder_unless_forced(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from onfh_seg.export import check_export_target

    shipped = config.default_model_dir()
    with pytest.raises(FileExistsError, match="force=true"):
        check_export_target(shipped)
    check_export_target(shipped, force=True)
    check_export_target(tmp_path / "export")
    assert config.defaults("export")["out_dir"] != "models" and config.defaults("export")["force"] is False


def test_tracking_parameter_defaults_come_from_the_yaml() -> None:
    """TrackParams / RegistrationParams have no defaults of their own: configs/track.yaml is the one place."""
    from onfh_seg.track.params import TrackParams
    from onfh_seg.track.register import RegistrationParams

    for cls in (TrackParams, RegistrationParams):
        assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(cls)), cls
    yaml = config.defaults("track")
    tp, rp = TrackParams.from_dict(), RegistrationParams.from_dict()
    assert all(getattr(tp, f.name) == yaml[f.name] for f in dataclasses.fields(TrackParams))
    assert all((list(v) if isinstance(v := getattr(rp, f.name), tuple) else v) == yaml["registration"][f.name]
               for f in dataclasses.fields(RegistrationParams))
    assert TrackParams.from_dict({"grid_mm": 0.7}).grid_mm == 0.7


@pytest.mark.parametrize("override", ["experiment=coarse", "experiment=fine", "experiment=fine_dr", "experiment=fine_dr2",
                                      "experiment=coarse_dr", "trainer=gpu", "trainer=smoke"])
def test_every_training_config_composes_and_validates(override: str) -> None:
    """Each experiment and trainer option that onfh-train composes passes the train schema."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(config.config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[override])
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    checked = config.validate("train", plain)
    assert checked["data"]["stage"] in ("fine", "coarse") and checked["trainer"]["max_steps"] > 0


def test_train_cli_bad_values_are_one_line(tmp_path: Path) -> None:
    """onfh-train rejects a wrong type or an unknown key in a group in one line, before any training."""
    for extra, expected in [
        ("model.lr=fast", "error: onfh-train: model.lr='fast' is not allowed: expected a number"),
        ("+trainer.max_stesp=3", "error: onfh-train: unknown key 'trainer.max_stesp' (did you mean 'trainer.max_steps'?)"),
    ]:
        res = _cli("onfh-train", [extra, f"run_dir={tmp_path / 'run'}"], tmp_path)
        assert res.returncode == 1, res.stderr
        assert res.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_settings_objects_are_typed_validated_and_complete() -> None:
    """config.infer_settings/track_settings: the schema dataclasses (nested sections too), every YAML key
    filled in, the same one-line errors; typed() takes a full configuration (what Hydra composes) back."""
    s = config.infer_settings({"input": "a.nii.gz", "out_dir": "o", "qc": {"min_confidence": 0.3}})
    assert isinstance(s, config.InferSettings) and isinstance(s.qc, config.QCSettings)
    assert s.qc.min_confidence == 0.3 and s.qc.head_ml_range == config.defaults("infer")["qc"]["head_ml_range"]
    assert list(config.as_dict(s)) == list(config.defaults("infer"))  # every key, in the YAML's order
    assert config.typed("infer", config.as_dict(s)) == s
    t = config.track_settings({"manifest": "m.csv", "infer_dir": "i", "out_dir": "o"})
    assert isinstance(t.registration, config.RegistrationSettings) and t.registration.seed == config.defaults("track")["registration"]["seed"]
    with pytest.raises(ConfigError, match=r"^onfh-infer: tta='flase' is not allowed"):
        config.infer_settings({"tta": "flase"}, require=False)
    with pytest.raises(ConfigError, match=r"missing value for 'input'"):
        config.infer_settings({"out_dir": "o"})
