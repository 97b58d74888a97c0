"""``python -m microtile.measure.power CAPTURE.jls [--trigger N] [--json OUT]``: the energy
of the trigger windows in a Joulescope capture file (one saved with
``--power joulescope,save=FILE.jls`` or recorded in the Joulescope UI with GPI N on the
board's trigger pin). Exit 0, or 2 for a file that is not a usable capture (one line)."""
from __future__ import annotations

import argparse
import json
import sys

from microtile.errors import MicrotileError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m microtile.measure.power", description=__doc__)
    parser.add_argument("capture", help="a .jls capture file (current, voltage, gpi[N])")
    parser.add_argument("--trigger", type=int, default=0, help="the GPI input the trigger is on (default 0)")
    parser.add_argument("--json", metavar="OUT.json", help="also write the report as JSON")
    args = parser.parse_args(argv)
    from microtile.measure.power.capture import energy_report
    from microtile.measure.power.joulescope_probe import read_jls

    try:
        capture = read_jls(args.capture, args.trigger)
    except MicrotileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    windows = len(capture.windows())
    report = energy_report(capture, f"jls:{args.capture}", inferences=windows)
    per = report["per_inference"]
    print(f"{args.capture}: {len(capture.current_a):,} samples at {capture.sample_rate_hz:g} Hz, "
          f"supply {report['supply_v']:.3f} V (measured), {windows} trigger window(s)")
    if per:
        print(f"energy per window: median {per['median_uj']:.3f} µJ (min {per['min_uj']:.3f}, max "
              f"{per['max_uj']:.3f}), average power {per['mean_power_mw']:.3f} mW, {per['time_us']:.1f} µs")
    else:
        print(f"no energy: {report['error']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
