"""Training step time of DSG with and without its DSG component (the supplement's "+15%").

"Without" is the ``no-dsg`` variant on the same detector: no union-box features, no GPI
generator, no scene-graph losses; the referring-relationship classifier reads the raw region
features. Both are timed in the same run through the engine's training loop on a
referring-relationship dataset (``sgstudy data synth-rr`` derives one), and the ratio of their
step times (median over ``--repeats`` alternating timings) is printed next to the supplement's
1.15. It also prints the measured Table 1 (``sgstudy complexity``, paper preset).

What the ratio covers depends on the preset: the DSG component includes the union-box branch,
n^2 ROI crops through the detector's own last stage. In ``tiny`` that stage is one 1 x 1 conv
block; in ``paper`` it is ResNet's ``layer4`` on 7 x 7 crops (supplement §1), about 800 G
multiply-adds per image at n = 32 (the table's last section), so a ``tiny`` ratio says little
about the paper's "+15%".

    python benchmarks/bench_dsg.py --data data_rr --preset tiny --steps 10
"""

from __future__ import annotations

import argparse
import statistics

import torch
from bench_train import CLOCKS, add_timing_flags, time_steps, timing_device

from sgstudy.config import RunConfig
from sgstudy.models.dsg.complexity import complexity_table, format_complexity_table

SUPPLEMENT_RATIO = 1.15


def variant_config(variant: str, args: argparse.Namespace, device: torch.device) -> RunConfig:
    return RunConfig.from_flat(
        {
            "model": "dsg", "dsg_variant": variant, "preset": args.preset,
            "data_root": args.data, "batch_size": args.batch_size, "device": str(device),
            "warmup_iters": 0,
        }
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="referring-relationship dataset")
    parser.add_argument("--preset", default="tiny", choices=("tiny", "paper"))
    parser.add_argument("--batch-size", type=int, default=1, help="images per step (paper: 1)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timings per variant, alternating")
    add_timing_flags(parser)
    args = parser.parse_args()
    device = timing_device(args)
    times: dict[str, list[float]] = {"no-dsg": [], "dsg": []}
    for repeat in range(args.repeats):
        # Repeat in alternating order and take the median: on a shared machine single timings
        # of the same variant differ by several times.
        for variant in ("no-dsg", "dsg") if repeat % 2 == 0 else ("dsg", "no-dsg"):
            config = variant_config(variant, args, device)
            seconds, peak = time_steps(config, args.steps, args.warmup, CLOCKS[args.clock])
            times[variant].append(seconds)
            peak_text = "-" if peak != peak else f"{peak:.2f} GiB"
            print(
                f"{variant:7s} {seconds:8.3f} s/step ({args.clock})  peak {peak_text}", flush=True
            )
    median = {variant: statistics.median(values) for variant, values in times.items()}
    ratio = median["dsg"] / median["no-dsg"]
    print(
        f"\nmedian of {args.repeats}: no-dsg {median['no-dsg']:.3f} s/step, dsg "
        f"{median['dsg']:.3f} s/step; with / without the DSG component: {ratio:.2f}x step time "
        f"(supplement: {SUPPLEMENT_RATIO:.2f}x)"
    )
    table = format_complexity_table(complexity_table("paper"))
    print(f"\nTable 1 (paper preset, sgstudy complexity):\n{table}")


if __name__ == "__main__":
    main()
