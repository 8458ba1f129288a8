"""Shared fixtures: small synthetic cohorts generated once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def synth_cfg(**over) -> dict:
    """configs/synth.yaml as a plain dict with overrides (nested keys via dicts)."""
    from onfh_seg.synth.cohort import synth_config

    return synth_config(over)


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    """Two patients (one unilateral, one bilateral), three timepoints, small matrices."""
    from onfh_seg.synth.cohort import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    cfg = synth_cfg(n_patients=2, seed=5, months=[0, 6, 12], acquisition={"max_matrix": 200})
    return generate_cohort(cfg, out)
