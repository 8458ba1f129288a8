#!/usr/bin/env bash
# Every DEVELOPMENT cohort scripts/judge_milestone.sh reads (WISE=0 SLAB=1 RETEST=1), regenerated into cache/ on a
# fresh machine (seeded, so the same scans each time; an existing cohort is kept, FORCE=1 regenerates):
#   accept_fs, slab_stress, slab_wide, slab_edge2 (and accept_like, accept_edge)   scripts/make_accept_like.sh
#   dev_c8   style C, seed 9301, 8 patients x months 0/12 (docs/training_history.md, "style C")
#   dev_c9   style C, seed 9302, 8 patients x months 0/3/12 (48 visible heads; the shipped 3826177e finds 46. Tables
#            before 2026-12-06 counted 40, so the dev_c9 of earlier sessions had other months, not recorded: compare
#            networks only on tables made from the same cohort, as judge_milestone.sh does)
#   rt40     test-retest, seed 2025, 40 patients, month 0 + same-day repeat (docs/benchmarks.md, "Repeatability")
#   f3       the same with seed 2031 (docs/training_history.md, "F3, retest")
#   cache/dr/fine_1.1mm_112/seed2112_shapes (and the training patients)   the fine validation crops of (3), (4), (6):
#            scripts/make_dr_caches.py, as the fine_fskd runs' first step renders them
# None is a held-out cohort. Usage: scripts/make_dev_cohorts.sh   (about 30 minutes on one core)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
scripts/make_accept_like.sh
"$BIN/python" scripts/make_dr_caches.py fine_fskd36
RT=('months=[0]' retest=true 'acquisition.orientations={axial: 0.2, coronal: 0.4, sagittal: 0.4}'
  'acquisition.slice_mm=[4.5,6.0]' 'acquisition.gap_mm=[0.3,1.0]' 'acquisition.snr=[8,15]')

source scripts/cohort_lib.sh
make_one() { synth_cohort "$@"; }  # name, then onfh-synth overrides

make_one dev_c8 style=c seed=9301 n_patients=8 'months=[0,12]'
make_one dev_c9 style=c seed=9302 n_patients=8 'months=[0,3,12]'
make_one rt40 n_patients=40 seed=2025 "${RT[@]}"
make_one f3 n_patients=40 seed=2031 "${RT[@]}"
