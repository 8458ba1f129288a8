"""``onfh-synth``: generate a synthetic longitudinal hip T1 MRI cohort.

Thin entry point: the composed configuration becomes onfh-synth's settings
(:class:`onfh_seg.config_schemas.SynthSettings`) and goes to :func:`onfh_seg.synth.cohort.synth_run`.
"""

from __future__ import annotations

from omegaconf import DictConfig
from tqdm import tqdm

from onfh_seg import config
from onfh_seg.cli.common import hydra_main, to_dict


def run(cfg: DictConfig) -> int:
    """Generate the cohort described by ``cfg`` (and previews if asked)."""
    settings = config.typed("synth", to_dict(cfg))
    # function-level import: the generator (numpy/scipy renderers) loads when the command runs: `--help` and
    # argument errors stay fast
    from onfh_seg.synth.cohort import cohort_size, synth_run

    n = cohort_size(settings)
    with tqdm(total=n, desc="onfh-synth patients", unit="patient") as bar:
        made = synth_run(settings, progress=lambda pid: bar.update(1))
    print(f"wrote {made.manifest} ({n} patients, {made.seconds:.1f} s)")
    if settings.preview:
        print(f"wrote {len(made.previews)} previews under {made.manifest.parent / 'preview'}")
    return 0


def main() -> None:
    hydra_main("synth", run)


if __name__ == "__main__":
    main()
