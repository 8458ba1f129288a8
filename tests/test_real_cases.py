"""Real, openly licensed MR scans run through the shipped model (issue 22, item 2).

The scans are committed under ``tests/data/real`` (byte-identical copies of
the upstream files; sources, licences, checksums and what each scan shows are
in ``tests/data/real/README.md``). No real hip MRI with both femoral heads in
view and a clear open licence could be found in public test data, so the cases
are three real scans without hips, which must be refused, and one real pelvic
MR (a prostate ADC map) whose femoral heads are cut in half by the field of
view. Nothing is downloaded at test time.

What is checked: the non-hip scans are refused (``not_hip_anatomy`` or
``no_femoral_head_found``, no hip, nothing segmented, no DICOM SEG/SR); on the
pelvic scan no lesion is invented and any hip reported lies on its own side.
That the model finds the two cut heads there (``partial_head``, right at
+x) is expected of a working head locator but met only in part by the current model (the left one):
that test is ``xfail(strict=False)``. Run with ``-s`` to see the measured
numbers of each scan.

Further real cases that are not committed (see "Cases kept outside the
repository" in ``tests/data/real/README.md``): three coronal T1 pelvic MRIs
with both femoral heads fully in view (TCIA CPTAC-UCEC) and one axial T1 of a
proximal thigh up to the lesser trochanter, no femoral head (TCIA
Soft-tissue-Sarcoma). Their files are looked up in ``tests/data/real/<case>``,
``$ONFH_REAL_DATA/<case>`` and ``../shared/data/real/<case>``, checked against
``tests/data/real/manifests/<case>.sha256``; a case whose files are absent is
skipped. On the pelvic scans both heads are found on their sides (head search
of f5d931d: coarse heads failing the gate's head checks dropped, a lattice scan
when none is left); the fine network still calls lesions over 0.5 mL on these
healthy-looking heads of two of them without test-time mirroring; with it (the default since 2026-12-04) none.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "data" / "real"
MODELS = ROOT / "models"
HAVE_MODEL = (MODELS / "fine.onnx").is_file() and (MODELS / "coarse.onnx").is_file()
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="models/coarse.onnx, fine.onnx are not shipped")

REFUSED = ("not_hip_anatomy", "no_femoral_head_found")
MAX_HEALTHY_LESION_ML = 0.5

# Byte-identical upstream files (README.md lists repository, path and commit of each).
SHA256 = {
    "sct_neck_spine/t2s_uncropped.nii.gz": "94941ac6edc95d36b03838591bea8427094d57228282167b0a7edf178e17fba9",
    "sct_neck_spine/t1w.nii.gz": "b9c5f1d04a80ddea35443afc3c87a5ff4f8c6b1c02f85584e55b81be5c4656fd",
    "cptac_sar_forearm_scout/data.zip": "4dfe8abdad0c60531061628c1fb0fa33e669451b68a6f3d9f6907df48aecd108",
    "qin_prostate_adc/pm-example-dcm.zip": "5376d9808ddf94b6fb66dc1fcf49213ea9f24deb7769cdb501c9dc8bf7f53625",
}
LICENCES = ("sct_neck_spine/LICENSE", "cptac_sar_forearm_scout/LICENSE.txt",
            "cptac_sar_forearm_scout/LICENSE.vtk-data", "qin_prostate_adc/LICENSE.txt")

# Femoral head centres of the prostate ADC scan (RAS mm), read off its slices (README): each sits at the
# lateral edge of the 180 mm field of view (x = -88 .. +90 mm), so only the medial half of each head is in it.
PROSTATE_HEADS = {"right": np.array([90.0, 12.0, -4.0]), "left": np.array([-90.0, 12.0, -4.0])}


# ---------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Case name -> input path: the NIfTI files as committed, the DICOM zips unpacked to a temporary folder."""
    tmp = tmp_path_factory.mktemp("real_inputs")
    for rel in ("cptac_sar_forearm_scout/data.zip", "qin_prostate_adc/pm-example-dcm.zip"):
        with zipfile.ZipFile(REAL / rel) as zf:
            zf.extractall(tmp / Path(rel).parent.name)
    return {
        "neck_t2s_axial": REAL / "sct_neck_spine" / "t2s_uncropped.nii.gz",
        "cspine_t1w_crop": REAL / "sct_neck_spine" / "t1w.nii.gz",
        "forearm_scout": tmp / "cptac_sar_forearm_scout" / "data",
        "prostate_adc": tmp / "qin_prostate_adc" / "701-ADCb500",
    }


class NoModel:
    """A segmenter that must never be called: for studies refused before the model."""

    version, sha256, providers = "none", None, []

    def segment(self, image, affine):
        raise AssertionError("the model must not run on a refused study")


# DICOM cases name their series: the automatic choice refuses both by their headers (a scout; an ADC map
# taken for a dynamic series), see test_dicom_studies_refused_by_series_choice.
SERIES = {"forearm_scout": "1", "prostate_adc": "701",
          # the coronal T1 after contrast (kept outside the repository), refused by the automatic choice
          "cptac_ucec_c3n00858": "29", "cptac_ucec_c3n01763": "29", "cptac_ucec_c3n01003": "29"}


@lru_cache(maxsize=1)
def segmenter():
    from onfh_seg.infer.engine import Segmenter

    return Segmenter(MODELS, provider="cpu", threads=2)


def summary(rec: dict) -> str:
    hips = [f"{h['side']}: head {h['head_volume_ml']:.1f} mL, lesion {h['lesion_volume_ml']:.2f} mL, "
            f"centre {h['head_centre_ras_mm']}, flags {h['qc_flags']}" for h in rec["hips"]]
    heads = [f"{h['volume_ml']:.1f} mL at {h['component_centre_ras_mm']} partial={h['partial']} "
             f"failures={h['failures']}" for h in (rec.get("anatomy") or {}).get("heads", [])]
    return (f"status {rec['status']} {rec.get('error') or ''} qc_flags {rec['qc_flags']}; "
            f"{len(rec['hips'])} hips {hips}; gate heads {heads}")


def run_case(path: Path, folder: Path, model, series: str = "auto", overlay: bool = False) -> dict:
    """One input through process_scan (onfh-infer's per-scan step), CLI defaults: its measurements + result."""
    from onfh_seg.infer.inputs import expand_input
    from onfh_seg.config import infer_settings
    from onfh_seg.infer.pipeline import process_scan
    from onfh_seg.run.outputs import output_paths

    [job] = expand_input(path, series=series)
    result = process_scan(job, folder, model, infer_settings({"overlay": overlay}, require=False))
    meas = json.loads(output_paths(folder, job.name)["measurements"].read_text())
    return {**meas, "result": result, "folder": folder}


@pytest.fixture(scope="module")
def records(inputs, tmp_path_factory) -> dict[str, dict]:
    """Each case through process_scan with the shipped model."""
    out = tmp_path_factory.mktemp("real_out")
    recs = {}
    for name, path in inputs.items():
        recs[name] = run_case(path, out / name, segmenter(), SERIES.get(name, "auto"))
        print(f"\n[real case] {name}: {summary(recs[name])}")
    return recs


# ---------------------------------------------------------------- the files


def test_committed_files_are_the_upstream_files_with_their_licences() -> None:
    for rel, digest in SHA256.items():
        assert hashlib.sha256((REAL / rel).read_bytes()).hexdigest() == digest, rel
    for rel in LICENCES:
        assert (REAL / rel).is_file(), rel
    readme = (REAL / "README.md").read_text(encoding="utf-8")
    assert all(digest in readme for digest in SHA256.values())


def test_dicom_geometry_as_documented(inputs) -> None:
    """The two DICOM series read as the README describes them (RAS: +x is the patient's right)."""
    from onfh_seg.io.dicom import load_series
    from onfh_seg.io.dicom_series import find_series

    [forearm] = find_series(inputs["forearm_scout"])
    img = load_series(forearm)
    assert img.shape == (512, 512, 3) and np.allclose(img.header.get_zooms()[:3], (0.9765625, 0.9765625, 12.0))
    [adc] = find_series(inputs["prostate_adc"])
    img = load_series(adc)
    assert img.shape == (256, 256, 20) and nib.aff2axcodes(img.affine) == ("L", "P", "S")
    corners = np.array([img.affine @ [i, j, 0, 1] for i in (0, 255) for j in (0, 255)])[:, :3]
    assert corners[:, 0].max() == pytest.approx(91.0, abs=1.5) and corners[:, 0].min() == pytest.approx(-89.3, abs=1.5)


def test_dicom_studies_refused_by_series_choice(inputs, tmp_path: Path) -> None:
    """Given as plain folders, neither DICOM study reaches the model: no T1 series among them."""
    for name in ("forearm_scout", "prostate_adc"):  # today: "no T1 series" (a scout; an ADC map taken for dynamic)
        rec = run_case(inputs[name], tmp_path / name, NoModel(), overlay=True)
        assert rec["status"] == "error" and "T1" in rec["error"], rec["error"]
        assert rec["hips"] == [] and rec["result"]["rows"] == []


# ---------------------------------------------------------------- the shipped model


def assert_refused(rec: dict) -> None:
    assert rec["status"] == "ok", rec.get("error")
    assert any(flag in rec["qc_flags"] for flag in REFUSED), summary(rec)
    assert rec["hips"] == [], summary(rec)
    assert all(not row["side"] for row in rec["result"]["rows"])
    for seg in rec["folder"].glob("*_seg.nii.gz"):
        assert not np.asarray(nib.load(str(seg)).dataobj).any(), f"{seg.name} claims a femoral head"
    assert not list(rec["folder"].glob("*_seg.dcm")) and not list(rec["folder"].glob("*_sr.dcm"))


@needs_model
@pytest.mark.parametrize("name", ["neck_t2s_axial", "cspine_t1w_crop", "forearm_scout"])
def test_scans_without_hips_are_refused(records, name: str) -> None:
    assert_refused(records[name])


@needs_model
def test_pelvic_scan_gets_no_invented_lesion_and_sides_from_the_affine(records) -> None:
    """Prostate ADC map (heads cut by the field of view): whatever is reported is on its own side, no lesion."""
    rec = records["prostate_adc"]
    assert rec["status"] == "ok", rec.get("error")
    for hip in rec["hips"]:
        assert hip["lesion_volume_ml"] <= MAX_HEALTHY_LESION_ML, summary(rec)
        x = hip["head_centre_ras_mm"][0]
        assert hip["side"] == ("right" if x > 0 else "left"), summary(rec)
        assert "partial_head" in hip["qc_flags"], summary(rec)  # both heads touch the edge of the field of view


@needs_model
def test_pelvic_scan_heads_the_gate_refused_carry_no_lesion(records) -> None:
    """Prostate ADC map: no head candidate the gate looked at carries a lesion over 0.5 mL either (without
    test-time mirroring, the default until 2026-12-04, the refused left-head half carried 2.5 mL)."""
    rec = records["prostate_adc"]
    assert rec["status"] == "ok", rec.get("error")
    for head in (rec.get("anatomy") or {}).get("heads", []):
        assert head["lesion_fraction"] * head["volume_ml"] <= MAX_HEALTHY_LESION_ML, summary(rec)


@needs_model
@pytest.mark.xfail(strict=False, reason="head locator: in the real prostate ADC scan (not T1), where the medial half of "
                                        "each head is in view, the shipped model 4eed8e1a finds neither head: the "
                                        "search judges 14 candidates and adds none (no_femoral_head_found; issue 22)")
def test_pelvic_scan_heads_found_where_they_are(records) -> None:
    """Both cut heads segmented where visible, flagged partial_head, on the right sides, near their true centres."""
    rec = records["prostate_adc"]
    hips = {h["side"]: h for h in rec["hips"]}
    assert set(hips) == {"right", "left"}, summary(rec)
    for side, hip in hips.items():
        centre = np.asarray(hip["head_centre_ras_mm"], float)
        # the centroid of the visible (medial) half lies ~9 mm medial of the true centre
        assert np.linalg.norm(centre - PROSTATE_HEADS[side]) < 25.0, summary(rec)
        assert 5.0 <= hip["head_volume_ml"] <= 60.0, summary(rec)  # about half a 25-60 mL head
        assert "partial_head" in hip["qc_flags"] and hip["lesion_volume_ml"] <= MAX_HEALTHY_LESION_ML, summary(rec)


# ---------------------------------------------------------------- cases kept outside the repository

MANIFESTS = REAL / "manifests"
EXTERNAL_ROOTS = [ROOT.parent / "shared" / "data" / "real"]  # after tests/data/real itself
if os.environ.get("ONFH_REAL_DATA"):
    EXTERNAL_ROOTS.insert(0, Path(os.environ["ONFH_REAL_DATA"]))

# Coronal T1 TSE after contrast (series 29), both femoral heads fully in view. Head centres (RAS mm, +x = the
# patient's right) read off the coronal slices (README, +-5 mm), head radius about 20 mm.
PELVIS_T1 = {
    "cptac_ucec_c3n00858": {"right": (50.0, 14.0, -7.0), "left": (-114.0, 14.0, -7.0)},
    "cptac_ucec_c3n01763": {"right": (103.0, 0.0, -48.0), "left": (-70.0, 0.0, -48.0)},
    "cptac_ucec_c3n01003": {"right": (105.0, 9.0, -5.0), "left": (-70.0, 9.0, 5.0)},
}
HEAD_CENTRE_TOL_MM = 15.0

def external_case(name: str) -> Path:
    """The folder of a case kept outside the repository, its files checked against the manifest; else skip."""
    found = [root / name for root in (REAL, *EXTERNAL_ROOTS) if (root / name / "image").is_dir()]
    if not found:
        pytest.skip(f"real case {name} not present (tests/data/real/README.md says where it comes from)")
    folder = found[0]
    expected = dict(line.split()[::-1] for line in (MANIFESTS / f"{name}.sha256").read_text().splitlines())
    actual = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in (folder / "image").iterdir()}
    assert actual == expected, f"{folder}: files differ from {name}.sha256"
    return folder


@pytest.fixture(scope="module")
def external_records(tmp_path_factory):
    """name -> process_scan's record of that external case with the shipped model (run once per case)."""
    out, cache = tmp_path_factory.mktemp("real_external"), {}

    def record(name: str) -> dict:
        if name not in cache:
            cache[name] = run_case(external_case(name) / "image", out / name, segmenter(), SERIES.get(name, "auto"))
            print(f"\n[real case] {name}: {summary(cache[name])}")
        return cache[name]

    return record


def nearest_head(hip: dict, heads: dict) -> tuple[str, float]:
    """The side of the true head nearest to a reported hip, and its distance in mm."""
    centre = np.asarray(hip["head_centre_ras_mm"], float)
    side = min(heads, key=lambda s: np.linalg.norm(centre - heads[s]))
    return side, float(np.linalg.norm(centre - heads[side]))


def test_external_manifests_match_the_readme() -> None:
    """Each manifest is named in the README with its own sha256 (the README is where the provenance is)."""
    readme = (REAL / "README.md").read_text(encoding="utf-8")
    for name in (*PELVIS_T1, "sts_thigh_t1"):
        text = (MANIFESTS / f"{name}.sha256").read_text()
        assert name in readme and hashlib.sha256(text.encode()).hexdigest() in readme, name


def test_post_contrast_pelvis_refused_by_series_choice(tmp_path: Path) -> None:
    """Given as a plain folder, the post-contrast coronal T1 never reaches the model (named series=29 above)."""
    rec = run_case(external_case("cptac_ucec_c3n01763") / "image", tmp_path, NoModel(), overlay=True)
    assert rec["status"] == "error" and "post-contrast" in rec["error"], rec["error"]
    assert rec["hips"] == [] and rec["result"]["rows"] == []


@needs_model
def test_thigh_without_femoral_head_is_refused(external_records) -> None:
    """Axial T1 SE of a proximal thigh up to the lesser trochanter and ischial tuberosity: no head to find."""
    assert_refused(external_records("sts_thigh_t1"))


@needs_model
@pytest.mark.parametrize("name", list(PELVIS_T1))
def test_pelvis_t1_reports_only_real_heads(external_records, name: str) -> None:
    """Whatever hip is reported is a real head, on its own side (not a uterus, a bladder or an iliac wing)."""
    rec, heads = external_records(name), {s: np.array(c) for s, c in PELVIS_T1[name].items()}
    assert rec["status"] == "ok", rec.get("error")
    for hip in rec["hips"]:
        side, dist = nearest_head(hip, heads)
        assert dist < HEAD_CENTRE_TOL_MM and hip["side"] == side, summary(rec)


@needs_model
@pytest.mark.parametrize("name", list(PELVIS_T1))
def test_pelvis_t1_both_heads_found(external_records, name: str) -> None:
    """Both fully visible heads found on their sides, near their centres, 15-120 mL, no partial flag."""
    rec, heads = external_records(name), {s: np.array(c) for s, c in PELVIS_T1[name].items()}
    hips = {h["side"]: h for h in rec["hips"]}
    assert set(hips) == {"right", "left"}, summary(rec)
    for side, hip in hips.items():
        assert np.linalg.norm(np.asarray(hip["head_centre_ras_mm"], float) - heads[side]) < HEAD_CENTRE_TOL_MM
        assert 15.0 <= hip["head_volume_ml"] <= 120.0
        assert "partial_head" not in hip["qc_flags"], summary(rec)


@needs_model
def test_pelvis_t1_as_nifti_gives_the_dicom_result(external_records, tmp_path: Path) -> None:
    """The same scan converted to NIfTI by another reader (SimpleITK: LPS storage, its own geometry code) gives the
    same hips on the same sides, within a voxel's worth of centre and 2% of head volume."""
    import SimpleITK as sitk

    name = "cptac_ucec_c3n00858"
    dicom = external_records(name)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(external_case(name) / "image")))
    nifti = tmp_path / "c3n00858.nii.gz"
    sitk.WriteImage(reader.Execute(), str(nifti))
    rec = run_case(nifti, tmp_path / "out", segmenter())
    assert rec["status"] == "ok", rec.get("error")
    by_side = {h["side"]: h for h in dicom["hips"]}
    assert sorted(h["side"] for h in rec["hips"]) == sorted(by_side), (summary(rec), summary(dicom))
    for hip in rec["hips"]:
        ref = by_side[hip["side"]]
        gap = np.linalg.norm(np.subtract(hip["head_centre_ras_mm"], ref["head_centre_ras_mm"]))
        assert gap < 1.5, (summary(rec), summary(dicom))
        assert hip["head_volume_ml"] == pytest.approx(ref["head_volume_ml"], rel=0.02)
        assert abs(hip["lesion_volume_ml"] - ref["lesion_volume_ml"]) <= 0.1


@needs_model
@pytest.mark.parametrize("name", list(PELVIS_T1))
def test_pelvis_t1_not_taken_for_damaged_data(external_records, name: str) -> None:
    """The scanner's zero-filled air beside a body outline that moves between 5.2 mm slices is not a damaged
    "constant slab" (every hip of these scans was untrusted for it)."""
    rec = external_records(name)
    assert "suspect_image_content" not in rec["qc_flags"], rec.get("qc_reasons")


@needs_model
@pytest.mark.parametrize("name", PELVIS_T1)
def test_pelvis_t1_no_false_lesion_on_healthy_heads(external_records, name: str) -> None:
    """No reported head of these healthy-looking hips carries a lesion over 0.5 mL (issue 22 item 4). Met with
    the CLI defaults since test-time mirroring is on (2026-12-04); without it C3N-00858's left head carried
    1.75 mL and C3N-01003's 0.64 mL (docs/benchmarks.md, "Mirroring, again")."""
    rec = external_records(name)
    assert rec["hips"], summary(rec)
    for hip in rec["hips"]:
        assert hip["lesion_volume_ml"] <= MAX_HEALTHY_LESION_ML, summary(rec)
