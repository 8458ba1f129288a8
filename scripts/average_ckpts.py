"""Average the weights of several checkpoints of one run (stochastic weight averaging over its milestones).

    .venv/bin/python scripts/average_ckpts.py OUT.ckpt run/checkpoints/step1000.ckpt run/checkpoints/step1500.ckpt ...

Writes a weights-only checkpoint (``onfh_seg.export.average_checkpoints``) that ``onfh-export`` and
``scripts/judge_fine.sh`` take like any other."""

from __future__ import annotations

import argparse
import sys

from onfh_seg.export import average_checkpoints


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("ckpts", nargs="+")
    a = ap.parse_args()
    try:
        print(average_checkpoints(a.ckpts, a.out))
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
