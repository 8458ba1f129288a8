"""Command-line habits of the field: -i/--input, -o/--output and --key value become key=value overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from onfh_seg.cli.common import ArgError, translate_args

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("tool,args,expected", [
    ("infer", ["-i", "scan.nii.gz", "-o", "out"], ["input=scan.nii.gz", "out_dir=out"]),
    ("infer", ["--input=scan.nii.gz", "--output", "out"], ["input=scan.nii.gz", "out_dir=out"]),
    ("infer", ["--tta", "false", "--fast", "workers=2"], ["tta=false", "fast=true", "workers=2"]),
    ("infer", ["--qc.min-confidence", "0.5", "--cfg", "job"], ["qc.min_confidence=0.5", "--cfg", "job"]),
    ("infer", ["-i", "my (1).nii.gz"], ["input='my (1).nii.gz'"]),  # the shell split it already: quoted for Hydra
    ("infer", ["--help"], ["--help"]),
    ("track", ["-i", "m.csv", "--infer-dir", "r", "-o", "t"], ["manifest=m.csv", "infer_dir=r", "out_dir=t"]),
    ("synth", ["-o", "c", "--preset", "demo", "--n-patients", "2"], ["out_dir=c", "+preset=demo", "n_patients=2"]),
    ("train", ["--experiment", "coarse"], ["experiment=coarse"]),
])
def test_options_become_overrides(tool, args, expected) -> None:
    assert translate_args(tool, args) == expected


@pytest.mark.parametrize("tool,args,message", [
    ("synth", ["-i", "x"], "-i is not an option of onfh-synth"),
    ("infer", ["-x"], "unknown option -x: use key=value"),
    ("infer", ["--input"], "--input needs a value: input=VALUE"),
])
def test_options_that_cannot_be_taken_are_one_line(tool, args, message) -> None:
    with pytest.raises(ArgError, match=message):
        translate_args(tool, args)


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "onfh-infer"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_short_flags_reach_the_tool(tmp_path: Path) -> None:
    res = _run("-i", "scan.nii.gz", "-o", "out", "--tta", "false", "--cfg", "job", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for line in ("input: scan.nii.gz", "out_dir: out", "tta: false"):
        assert line in res.stdout.splitlines()
    res = _run("-i", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [f"error: input not found: {tmp_path}/missing.nii.gz"]
    res = _run("--provder", "cpu", cwd=tmp_path)
    assert res.returncode == 1 and "unknown key 'provder' (did you mean 'provider'?)" in res.stderr
    assert "usage" not in res.stderr.lower()


@pytest.mark.parametrize("tool, args", [
    ("infer", ["input=scan.nii.gz", "out_dir=out", "workers=1", "tta=false", "anatomy.enabled=false"]),
    ("track", ["manifest=c/manifest.csv", "infer_dir=results", "out_dir=out"]),
    ("eval", ["cohort=c/manifest.csv"]),
])
def test_one_composition_gives_the_config_hydra_main_gives(tool, args, monkeypatch) -> None:
    """Issue 28 (a new process's fixed cost): a plain command line is composed once with Hydra's compose API
    instead of twice by ``hydra.main``; the task gets the same configuration either way, and a flag (``--cfg``)
    still goes through ``hydra.main``."""
    import onfh_seg.cli.common as common

    seen: list[dict] = []

    def task(cfg):
        seen.append(common.to_dict(cfg))
        return 0

    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(common, "_composed_once", lambda *a: None)
        monkeypatch.setattr(sys, "argv", [f"onfh-{tool}", *args])
        with pytest.raises(SystemExit) as exit_:
            common.hydra_main(tool, task)
        assert exit_.value.code == 0
    assert len(seen) == 2 and seen[0] == seen[1]
    monkeypatch.undo()
    assert common._composed_once(tool, common.config_dir(), ["--cfg", "job"]) is None


def test_a_tool_with_a_run_folder_is_not_composed_first(monkeypatch, capsys) -> None:
    """onfh-train's config sets a run folder, so ``_composed_once`` would compose only to hand over to
    ``hydra.main`` (three compositions in all): onfh-train asks for ``in_place=False`` and it is not called."""
    import onfh_seg.cli.common as common
    import onfh_seg.cli.train as train

    asked: list[dict] = []
    monkeypatch.setattr(train, "hydra_main", lambda name, task, **kw: asked.append({"name": name, **kw}))
    train.main()
    assert asked == [{"name": "train", "in_place": False}]
    calls: list[tuple] = []
    monkeypatch.setattr(common, "_composed_once", lambda *a: calls.append(a))
    monkeypatch.setattr(sys, "argv", ["onfh-train", "--cfg", "job"])
    common.hydra_main("train", lambda cfg: 0, in_place=False)  # hydra.main prints the job's config
    assert calls == [] and "task_name" in capsys.readouterr().out
    monkeypatch.undo()
    assert common._composed_once("train", common.config_dir(), ["trainer=cpu"]) is None  # it would hand over
