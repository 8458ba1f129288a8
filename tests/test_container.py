"""The containers, built and run: the CPU variant of docker/Dockerfile on a demo scan (outputs identical to
the host's), and docker/Dockerfile.pacs as a listener between a real Orthanc and the model.

Slow (``-m slow``): each build takes minutes. They skip with a reason where podman is absent or cannot
run a container. The base image is made here, without any registry: ``ONFH_TEST_BASE_IMAGE`` names one
already present; otherwise ``mmdebstrap --variant=minbase`` makes a Debian base with python3 and
python3-venv (from the host's Debian mirror, with the host's extra CA certificates, so that pip inside
the build trusts what the host trusts) and ``podman import`` loads it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pacs_fixtures import hip_studies, orthanc  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
BASE = os.environ.get("ONFH_TEST_BASE_IMAGE", "localhost/onfh-test-base:bookworm")
IMAGE = "localhost/onfh-seg:cpu-test"
PACS_IMAGE = "localhost/onfh-seg-pacs:cpu-test"


def _podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {(res.stdout + res.stderr)[-3000:]}")
    return res


def _image_exists(name: str) -> bool:
    return _podman("image", "exists", name, check=False).returncode == 0


def _make_base(tmp: Path) -> None:
    """A Debian minbase image with python3 and python3-venv, imported into podman as BASE."""
    if _image_exists(BASE):
        return
    if shutil.which("mmdebstrap") is None:
        pytest.skip(f"no base image {BASE} and no mmdebstrap to make one (apt-get install mmdebstrap)")
    release = "bookworm"
    os_release = Path("/etc/os-release").read_text() if Path("/etc/os-release").is_file() else ""
    m = re.search(r"^VERSION_CODENAME=(\w+)", os_release, flags=re.M)
    if m:
        release = m.group(1)
    tarball = tmp / "base.tar"
    hooks = []
    extra_certs = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    if extra_certs:  # this machine's own CA certificates (a proxy's), not part of the published recipe
        hooks = [f'--customize-hook=mkdir -p "$1/usr/local/share/ca-certificates" && cp {" ".join(map(str, extra_certs))} '
                 '"$1/usr/local/share/ca-certificates/" && chroot "$1" update-ca-certificates',
                 ]
    cmd = ["mmdebstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", *hooks,
           release, str(tarball)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        pytest.skip(f"mmdebstrap could not make a base image: {res.stderr.strip().splitlines()[-1:]}")
    _podman("import", str(tarball), BASE, timeout=600)


@pytest.fixture(scope="module")
def cpu_image(tmp_path_factory) -> str:
    """The CPU variant of docker/Dockerfile, built with `make image` from a locally made base."""
    if shutil.which("podman") is None:
        pytest.skip("podman not installed (apt-get install podman; see docker/README.md)")
    probe = _podman("info", check=False, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run here: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    _make_base(tmp_path_factory.mktemp("base"))
    res = subprocess.run(["make", "image", "ENGINE=podman", "IMAGE_VARIANT=cpu", f"BASE_IMAGE={BASE}", f"IMAGE={IMAGE}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return IMAGE


def _demo_scan(folder: Path) -> Path:
    from onfh_seg.synth.cohort import generate_cohort, synth_config

    generate_cohort(synth_config({"demo": True, "months": [0]}), folder)
    return sorted((folder / "images").glob("P01_m00*.nii.gz"))[0]


@pytest.mark.slow
def test_cpu_image_segments_like_the_host(cpu_image: str, tmp_path: Path) -> None:
    """The image (no torch) on demo patient 1's baseline: the host's segmentation voxel for voxel, the same
    measurements; run as the docker/README says (own user, input read-only, no network)."""
    import nibabel as nib
    import numpy as np

    scan = _demo_scan(tmp_path / "cohort")
    inp, out, ref = tmp_path / "in", tmp_path / "out", tmp_path / "ref"
    inp.mkdir()
    out.mkdir()
    shutil.copy(scan, inp / scan.name)
    assert _podman("run", "--rm", cpu_image, "python", "-c", "import torch", check=False).returncode != 0
    res = _podman("run", "--rm", "--network", "none", "--user", f"{os.getuid()}:{os.getgid()}",
                  "-v", f"{inp}:/input:ro", "-v", f"{out}:/output", cpu_image, timeout=900, check=False)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    host = subprocess.run([str(Path(sys.executable).parent / "onfh-infer"), "-i", str(inp), "-o", str(ref)],
                          capture_output=True, text=True, timeout=900)
    assert host.returncode == 0, host.stderr[-3000:]
    name = scan.name[: -len(".nii.gz")]
    a, b = nib.load(str(out / f"{name}_seg.nii.gz")), nib.load(str(ref / f"{name}_seg.nii.gz"))
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    assert np.array_equal(a.affine, b.affine)
    mine = json.loads((out / f"{name}_measurements.json").read_text())
    theirs = json.loads((ref / f"{name}_measurements.json").read_text())
    assert mine["hips"] == theirs["hips"]


@pytest.mark.slow
def test_pacs_image_listens_between_orthanc_and_the_model(cpu_image: str, orthanc, hip_studies, tmp_path: Path) -> None:
    """docker/Dockerfile.pacs on the CPU image: Orthanc pushes a study to the listener container, which
    sends SEG + SR back into the same study in Orthanc."""
    from pacs_fixtures import free_port, study_files

    from onfh_seg.pacs.net import dicomweb_client, stow

    res = subprocess.run(["make", "image-pacs", "ENGINE=podman", "IMAGE_VARIANT=cpu", f"BASE_IMAGE={BASE}",
                          f"IMAGE={cpu_image}", f"PACS_IMAGE={PACS_IMAGE}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    port, state = free_port(), tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o777)
    name = f"onfh-listener-test-{os.getpid()}"
    _podman("run", "-d", "--rm", "--name", name, "--network", "host", "-v", f"{state}:/state",
            "-e", f"ONFH_PACS_PORT={port}", "-e", "ONFH_PACS_SETTLE_S=2", "-e", "ONFH_PACS_DEST_HOST=127.0.0.1",
            "-e", f"ONFH_PACS_DEST_PORT={orthanc.dicom_port}", "-e", "ONFH_PACS_DEST_AE=ORTHANC",
            PACS_IMAGE, "infer.provider=cpu", "infer.tta=false")
    try:
        study = hip_studies[0]
        stow(dicomweb_client(orthanc.dicomweb), study_files(study))  # the study is in the PACS first
        deadline = time.monotonic() + 120
        while True:  # until the listener answers (C-ECHO, as its health check does)
            echo = _podman("exec", name, "python", "-m", "onfh_seg.pacs.echo", check=False)
            if echo.returncode == 0:
                break
            assert time.monotonic() < deadline, (echo.stdout + echo.stderr + _podman("logs", name, check=False).stdout)
            time.sleep(1)
        orthanc.push_study(study.study_uid, "onfh", "ONFH_SEG", port)
        deadline = time.monotonic() + 300
        while True:
            modalities = [s.get("Modality") for s in orthanc.series_of_study(study.study_uid)]
            if "SEG" in modalities and "SR" in modalities:
                break
            logs = _podman("logs", name, check=False)
            assert time.monotonic() < deadline, (logs.stdout + logs.stderr)[-3000:]
            time.sleep(1)
        audit = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines() if line.strip()]
        assert audit[-1]["status"] == "sent"
    finally:
        _podman("stop", "-t", "30", name, check=False, timeout=120)
