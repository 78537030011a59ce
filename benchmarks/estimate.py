"""How good the live display's first time estimate is: a sweep estimated as the display
does it, from its first run's first epoch, against the wall time the sweep then took.

    python benchmarks/estimate.py configs/smoke.yaml --set data.root=path/to/cifar10 \
        [--set train.epochs=3] [--output /tmp/estimate-sweep]

It runs the config's whole sweep into a fresh folder (``--output``, a temporary one by
default) and prints the first estimate (elapsed time at the end of the first epoch plus
the time the clock said was left), the sweep's wall time and their ratio. A ratio within
0.5–2 is the goal; on a loaded machine the first epoch is slower than the rest and the
ratio drifts above it, which is why this is a benchmark and not a test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bnorder.runs.config import load_config
from bnorder.runs.estimate import SweepClock
from bnorder.runs.events import EpochDone, Event
from bnorder.runs.plan import SweepOptions
from bnorder.runs.sweep import prepare_sweep


def first_estimate(config_path: str, overrides: list[str], output: str) -> tuple[float, float]:
    """(the first estimate of the sweep's whole time, its wall time), in seconds."""
    config = load_config(config_path, overrides, output=output)
    predicted: list[float] = []
    started = time.monotonic()
    with prepare_sweep(config, SweepOptions()) as sweep:
        clock = SweepClock.of(sweep.plan)

        def watch(event: Event) -> None:  # after the clock has heard the epoch's end
            left = clock.remaining()
            if isinstance(event, EpochDone) and not predicted and left is not None:
                predicted.append(time.monotonic() - started + left)

        report = sweep.run([clock, watch])
    if not predicted:
        raise SystemExit("the sweep trained no epoch: nothing was estimated")
    return predicted[0], report.wall_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE override")
    parser.add_argument("--output", default=None, help="the sweep's folder (default: temporary)")
    args = parser.parse_args()
    output = args.output or str(Path(tempfile.mkdtemp(prefix="bnorder-estimate-")))
    predicted, wall = first_estimate(args.config, args.set, output)
    print(
        f"first estimate {predicted:.1f} s, sweep took {wall:.1f} s, ratio {predicted / wall:.2f}"
    )


if __name__ == "__main__":
    main()
