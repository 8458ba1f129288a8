# Sourced by the cohort scripts (make_accept_like.sh, make_dev_cohorts.sh): one onfh-synth cohort written to a
# temporary folder and renamed when complete; an existing cohort is kept unless FORCE=1.
#   synth_cohort NAME [onfh-synth overrides...]   -> cache/NAME/manifest.csv
synth_cohort() {
  local out=cache/$1; shift
  if [[ -f $out/manifest.csv && -z ${FORCE:-} ]]; then
    echo "$out exists (FORCE=1 to regenerate)"; return
  fi
  rm -rf "$out.tmp"
  "${BIN:-.venv/bin}/onfh-synth" out_dir="$out.tmp" "$@" || return 1
  rm -rf "$out"
  mv "$out.tmp" "$out"
  echo "wrote $out/manifest.csv"
}
