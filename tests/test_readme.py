"""The README is for users: short, only files a clone has, and every command in it is run somewhere.

Every command of the README (each line of a ```bash block, heredocs and continued lines joined; each
inline code span that starts like a command) must be listed below with what runs it: a test
(``tests/<file>::<function>``, checked to exist), ``make demo`` (checked against the Makefile's demo
recipe), ``.ci/run`` (checked against it) or ``make test``. A new command in the README without an
entry fails this test. The slow tests run the README's Python example and Orthanc walk-through as
written, in a folder holding the demo cohort.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 250
COMMAND_STARTS = ("onfh-", "make", "pip ", "python", "apt-get", "docker ", "podman ", "curl ", "Orthanc ")

WALKTHROUGH_TEST = "tests/test_readme.py::test_orthanc_walkthrough_runs_as_written"
# command -> what runs it
COVERED = {
    "pip install .": "tests/test_install.py::test_clean_venv_install_runs_onfh_infer_outside_the_checkout",
    "make demo": "make demo",
    "make test": ".ci/run",
    "onfh-synth out_dir=outputs/demo/cohort +preset=demo preview=true": "make demo",
    "onfh-infer -i outputs/demo/cohort/manifest.csv -o outputs/demo/infer": "make demo",
    "onfh-track manifest=outputs/demo/cohort/manifest.csv infer_dir=outputs/demo/infer out_dir=outputs/demo/track":
        "make demo",
    "onfh-infer -i scan.nii.gz -o results":
        "tests/test_install.py::test_clean_venv_install_runs_onfh_infer_outside_the_checkout",
    "onfh-infer -i scans/ -o results": "tests/test_infer_cli.py::test_outputs_names_grid_json_csv",
    "onfh-infer -i dicom_study/ -o results": "tests/test_infer_cli.py::test_dicom_study_writes_seg_sr_and_series_info",
    "onfh-track manifest=cohort/manifest.csv infer_dir=results out_dir=tracking":
        "tests/test_track_cli.py::test_cli_end_to_end_errors_and_resume",
    "onfh-synth out_dir=cohort n_patients=4": "tests/conftest.py::synth_cohort",
    "onfh-pacs mode=pull pull.url=http://pacs:8042/dicom-web pull.since_last_run=true": WALKTHROUGH_TEST,
    "make image": "tests/test_container.py::test_cpu_image_segments_like_the_host",
    "python -m onfh_seg.pacs.demo": WALKTHROUGH_TEST,
    "apt-get install orthanc orthanc-dicomweb": ".ci/run",
}
# a block is covered as a whole by the test that runs it (keyed by its first command)
BLOCKS = {
    "mkdir -p orthanc-demo": WALKTHROUGH_TEST,
    "from onfh_seg import segment, track": "tests/test_readme.py::test_python_example_runs_as_written",
}


def readme() -> str:
    return README.read_text(encoding="utf-8")


def fenced_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


def block_commands(block: str) -> list[str]:
    """Commands of a bash block: comments dropped, ``\\`` continuations and heredocs joined to their command."""
    out: list[str] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].split("  #")[0].rstrip() if not lines[i].lstrip().startswith("#") else ""
        i += 1
        if not line:
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        heredoc = re.search(r"<<'?(\w+)'?", line)
        if heredoc:
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                i += 1
            i += 1
        out.append(line)
    return out


def readme_commands() -> tuple[list[str], list[list[str]]]:
    """(inline commands, the commands of each bash block)."""
    text = readme()
    blocks = [block_commands(b) for b in fenced_blocks(text, "bash")]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    spans = [" ".join(c.split()) for c in re.findall(r"`([^`]+)`", prose)]
    inline = [c for c in spans if c.startswith(COMMAND_STARTS) and " " in c]  # a bare tool name is no command
    return inline, blocks


def _check_runner(command: str, runner: str) -> str | None:
    """None if ``runner`` exists and holds ``command``; else what is wrong."""
    if runner.startswith("tests/"):
        path, _, func = runner.partition("::")
        text = (ROOT / path).read_text(encoding="utf-8") if (ROOT / path).is_file() else ""
        return None if re.search(rf"^def {func}\(", text, flags=re.M) else f"{runner} does not exist"
    if runner == "make demo":
        make = (ROOT / "Makefile").read_text(encoding="utf-8")
        recipe = make[make.index("\ndemo:"):].split("\n\n")[0]
        lines = [line.strip().replace("$(BIN)/", "").replace("$(DEMO)", "outputs/demo") for line in recipe.splitlines()]
        return None if command == "make demo" or command in lines else f"make demo does not run {command!r}"
    if runner == ".ci/run":
        ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
        words = [w for w in command.split() if w not in ("apt-get", "install")]
        found = command in ci or all(f" {w}" in ci for w in words)
        return None if found else f".ci/run does not run {command!r}"
    return f"unknown runner {runner!r}"


def test_readme_user_part_is_short() -> None:
    assert len(readme().splitlines()) < MAX_LINES


def test_readme_keeps_the_research_warning_near_the_top() -> None:
    top = " ".join(readme().splitlines()[:15])
    assert "not for clinical use" in top and "synthetic data only" in top


def test_readme_names_only_what_a_clone_has_and_no_history() -> None:
    text = readme()
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split())
    named = set(re.findall(r"(?<![\w/.])((?:docs|models|configs|docker|scripts|src|tests)/[\w./-]+\.\w+)", text))
    named |= {m for m in re.findall(r"\]\(([^)#]+)\)", text) if not m.startswith("http")}
    missing = sorted(p for p in named if p not in tracked and not (ROOT / p).is_file())
    assert missing == []
    assert "shared/" not in text
    for pattern in (r"\bissue \d+", r"\bsession\b", r"\bround \d", r"\bcommit [0-9a-f]{7}", r"at commit"):
        assert not re.search(pattern, text, flags=re.I), pattern


def test_every_readme_command_is_run_by_a_test_or_make_demo() -> None:
    inline, blocks = readme_commands()
    problems = []
    for command in inline:
        runner = COVERED.get(command)
        problems.append(f"README command without a runner: {command!r}" if runner is None
                        else _check_runner(command, runner))
    for commands in blocks:
        runner = BLOCKS.get(commands[0]) if commands else None
        if runner is not None:
            problems.append(_check_runner(commands[0], runner))
            continue
        for command in commands:
            runner = COVERED.get(command)
            problems.append(f"README command without a runner: {command!r}" if runner is None
                            else _check_runner(command, runner))
    python_blocks = fenced_blocks(readme(), "python")
    for block in python_blocks:
        first = next(line for line in block.splitlines() if line.strip())
        problems.append(_check_runner(first, BLOCKS[first]) if first in BLOCKS
                        else f"README Python example without a runner: {first!r}")
    assert [p for p in problems if p] == []


# ---------------------------------------------------------------- the README's examples, run as written


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory) -> Path:
    """A folder like the one `make demo` leaves: outputs/demo/cohort (the demo preset)."""
    from onfh_seg.synth.cohort import generate_cohort, synth_config

    folder = tmp_path_factory.mktemp("readme")
    generate_cohort(synth_config({"demo": True, "preview": False}), folder / "outputs" / "demo" / "cohort")
    return folder


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONFH_SEG_") and k != "PYTHONPATH"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["ONFH_SEG_CONFIGS"] = str(ROOT / "configs")
    env["ONFH_SEG_MODELS"] = str(ROOT / "models")
    return env


@pytest.mark.slow
def test_python_example_runs_as_written(demo_folder: Path) -> None:
    block = fenced_blocks(readme(), "python")[0]
    res = subprocess.run([sys.executable, "-c", block], cwd=demo_folder, env=_env(), capture_output=True, text=True,
                         timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    assert re.search(r"^right \d", res.stdout, flags=re.M), res.stdout
    assert (demo_folder / "outputs" / "api" / "track" / "reports" / "P01.html").is_file()


@pytest.mark.slow
def test_orthanc_walkthrough_runs_as_written(demo_folder: Path) -> None:
    """The bare-metal Orthanc block, with free ports instead of 8042/4242 (and the plugin where it lies)."""
    from pacs_fixtures import dicomweb_plugin, free_port

    for tool in ("Orthanc", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (apt-get install orthanc orthanc-dicomweb curl; .ci/run does)")
    plugin = dicomweb_plugin()
    if plugin is None:
        pytest.skip("Orthanc DICOMweb plugin not found (apt-get install orthanc-dicomweb)")
    block = next(b for b in fenced_blocks(readme(), "bash") if b.startswith("mkdir -p orthanc-demo"))
    script = (block.replace("8042", str(free_port())).replace("4242", str(free_port()))
              .replace("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", str(plugin)))
    res = subprocess.run(["bash", "-e", "-c", script], cwd=demo_folder, env=_env(), capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert "found 1: sent 1" in res.stdout, res.stdout
    listed = set(res.stdout.split())
    assert {'"MR"', '"SEG"', '"SR"'} <= listed, res.stdout
