"""Bench (slow): for a study pushed to the listener, seconds from the last instance received to SEG + SR stored in
Orthanc, with onfh-pacs's default inference settings (TTA on) on full-size onfh-synth scans (default acquisition).

    .venv/bin/python -m pytest tests/test_pacs_bench.py -m slow -s -q
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom", reason="the 'pacs' extra (pynetdicom) is not installed")

from pacs_fixtures import DemoStudy, free_port, orthanc  # noqa: E402,F401
from test_pacs_listener import Listener, results, wait_for  # noqa: E402

SETTLE_S = 2.0


@pytest.mark.slow
def test_bench_last_instance_to_seg_and_sr_stored(orthanc, tmp_path: Path) -> None:
    import pydicom
    from pydicom.uid import generate_uid

    from onfh_seg.io.manifest import read_manifest
    from onfh_seg.pacs.demo import nifti_to_dicom_series
    from onfh_seg.synth.cohort import generate_cohort, synth_config

    manifest = generate_cohort(synth_config({"n_patients": 2, "seed": 11, "months": [0]}), tmp_path / "cohort")
    studies = []
    for row in read_manifest(manifest):
        uid = generate_uid()
        files = nifti_to_dicom_series(manifest.parent / row["image"], tmp_path / "dicom" / row["patient_id"],
                                      patient_id=row["patient_id"], patient_name="Bench^Case", study_uid=uid,
                                      study_date="20260105")
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        studies.append((DemoStudy(files[0].parent, uid, str(ds.SeriesInstanceUID), row["patient_id"], "Bench^Case"),
                        (int(ds.Rows), int(ds.Columns), len(files))))
    state = tmp_path / "state"
    listener = Listener(state, free_port(), orthanc.dicom_port, infer=("infer.provider=cpu",),
                        settle_s=SETTLE_S)
    try:
        for study, shape in studies:
            listener.send(study)
            t_last = time.monotonic()  # the last C-STORE response: the last instance is received
            wait_for(lambda s=study: results(orthanc, s) == {"SEG": 1, "SR": 1}, 300, "SEG+SR")
            elapsed = time.monotonic() - t_last
            print(f"\nbench: {shape[0]}x{shape[1]}x{shape[2]} study: last instance -> SEG+SR stored {elapsed:.1f} s "
                  f"({elapsed - SETTLE_S:.1f} s beyond settle_s={SETTLE_S:g})")
            assert elapsed > SETTLE_S
    finally:
        listener.stop(15)
