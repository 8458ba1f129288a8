"""Orthanc for the PACS round-trip tests: started on 127.0.0.1 with a temporary configuration and storage.

``orthanc`` (a pytest fixture, module scope) skips with a reason when the
``Orthanc`` binary (Debian ``orthanc``) or the DICOMweb plugin (``orthanc-dicomweb``)
is absent; ``.ci/run`` installs both.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc", "/usr/local/share/orthanc/plugins")
ORTHANC_AET = "ORTHANC"


@dataclass
class Orthanc:
    """A running Orthanc: HTTP (REST + DICOMweb) and DICOM ports on 127.0.0.1."""

    http_port: int
    dicom_port: int
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def get(self, path: str):
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: bytes, method: str = "POST"):
        req = urllib.request.Request(f"{self.url}{path}", data=body, method=method)
        with urllib.request.urlopen(req, timeout=120) as resp:
            text = resp.read()
        return json.loads(text) if text.strip() else None

    def push_study(self, study_uid: str, modality: str, ae_title: str, port: int) -> None:
        """Register ``ae_title`` at 127.0.0.1:``port`` as ``modality`` and C-STORE the study to it (as a PACS does)."""
        self.post(f"/modalities/{modality}", json.dumps({"AET": ae_title, "Host": "127.0.0.1", "Port": port}).encode(),
                  method="PUT")
        ids = self.post("/tools/find", json.dumps({"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}).encode())
        self.post(f"/modalities/{modality}/store", ids[0].encode())

    def delete_all(self) -> None:
        for study in self.get("/studies"):
            req = urllib.request.Request(f"{self.url}/studies/{study}", method="DELETE")
            urllib.request.urlopen(req, timeout=10).close()

    def series_of_study(self, study_uid: str) -> list[dict]:
        """The MainDicomTags of every series of a study (by StudyInstanceUID)."""
        body = json.dumps({"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}).encode()
        req = urllib.request.Request(f"{self.url}/tools/find", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            ids = json.loads(resp.read())
        out = []
        for sid in ids:
            for series in self.get(f"/studies/{sid}/series"):
                out.append({**series["MainDicomTags"], "Instances": series["Instances"]})
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin library, or None."""
    for folder in PLUGIN_DIRS:
        found = sorted(Path(folder).glob("libOrthancDicomWeb.so*")) if Path(folder).is_dir() else []
        if found:
            return found[0]
    return None


def start_orthanc(folder: Path, timeout_s: float = 30.0) -> Orthanc:
    """Start Orthanc with a configuration and storage in ``folder``; wait until it answers."""
    binary, plugin = shutil.which("Orthanc"), dicomweb_plugin()
    if binary is None or plugin is None:
        raise FileNotFoundError("Orthanc or its DICOMweb plugin is not installed")
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "onfh-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": ORTHANC_AET, "HttpBindAddress": "127.0.0.1",
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "StorageCompression": False,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = folder / "orthanc.log"
    proc = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = Orthanc(http_port, dicom_port, proc, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited ({proc.returncode}): {log.read_text()[-500:]}")
        try:
            server.get("/system")
            server.get("/dicom-web/studies")
            return server
        except OSError:
            time.sleep(0.2)
    stop_orthanc(server)
    raise RuntimeError(f"Orthanc did not answer within {timeout_s} s")


def stop_orthanc(server: Orthanc) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A fresh Orthanc for one test module (skipped with a reason when not installed)."""
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does)")
    if dicomweb_plugin() is None:
        pytest.skip(f"Orthanc DICOMweb plugin not found in {', '.join(PLUGIN_DIRS)} (apt-get install orthanc-dicomweb)")
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    stop_orthanc(server)


SHARED_HEAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom" / "siemens_t1_decubitus" / "HFS"


@dataclass
class DemoStudy:
    """One demo study on disk: its folder, StudyInstanceUID, source series UID and patient."""

    folder: Path
    study_uid: str
    series_uid: str
    patient_id: str
    patient_name: str


@pytest.fixture(scope="session")
def hip_studies(tmp_path_factory) -> list[DemoStudy]:
    """Two patients, baseline + 6-month follow-up (onfh-synth, coronal, 160 matrix, ~22 slices) as MR DICOM studies."""
    import pydicom
    from pydicom.uid import generate_uid

    from onfh_seg.io.manifest import read_manifest
    from onfh_seg.pacs.demo import nifti_to_dicom_series
    from onfh_seg.synth.cohort import generate_cohort, synth_config

    root = tmp_path_factory.mktemp("pacs_cohort")
    cfg = synth_config({"n_patients": 2, "seed": 3, "months": [0, 6],
                        "acquisition": {"max_matrix": 160, "slice_mm": [5.0, 6.0], "small_fov_fraction": 0.0,
                                        "orientations": {"axial": 0.0, "coronal": 1.0, "sagittal": 0.0}}})
    manifest = generate_cohort(cfg, root / "cohort")
    studies = []
    for row in read_manifest(manifest):
        if not row.get("image"):
            continue
        pid, months = str(row["patient_id"]), int(float(row["months"]))
        study_uid, name = generate_uid(), f"Synthetic^{pid}"
        folder = root / "dicom" / f"{pid}_m{months:02d}"
        files = nifti_to_dicom_series(manifest.parent / row["image"], folder, patient_id=pid, patient_name=name,
                                      study_uid=study_uid, study_date=f"2026{1 + months:02d}05",
                                      accession=f"ACC{pid[-3:]}{months:02d}")
        series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        studies.append(DemoStudy(folder, study_uid, series_uid, pid, name))
    return studies


def head_study() -> DemoStudy:
    """The shared Siemens head series (skips the test when ../shared is absent)."""
    import pydicom

    files = sorted(SHARED_HEAD.glob("*.dcm")) if SHARED_HEAD.is_dir() else []
    if not files:
        pytest.skip(f"shared head series not found: {SHARED_HEAD}")
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return DemoStudy(SHARED_HEAD, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.PatientID),
                     str(ds.PatientName))


def study_files(study: DemoStudy) -> list[Path]:
    return sorted(p for p in study.folder.iterdir() if p.suffix == ".dcm")
