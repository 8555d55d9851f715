"""Training step time of DSG with and without its DSG component (the supplement's "+15%").

"Without" is the ``no-dsg`` variant on the same detector: no union-box features, no GPI
generator, no scene-graph losses; the referring-relationship classifier reads the raw region
features. Both are timed in the same run through the engine's training loop on a
referring-relationship dataset (``sgstudy data synth-rr`` derives one), and the ratio of their
step times is printed next to the supplement's 1.15. It also prints the measured Table 1
(``sgstudy complexity``, paper preset).

    python benchmarks/bench_dsg.py --data data_rr --preset tiny --steps 10
"""

from __future__ import annotations

import argparse

import torch
from bench_train import time_steps

from sgstudy.config import RunConfig
from sgstudy.engine import resolve_device
from sgstudy.models.dsg.complexity import complexity_table, format_complexity_table

SUPPLEMENT_RATIO = 1.15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="referring-relationship dataset")
    parser.add_argument("--preset", default="tiny", choices=("tiny", "paper"))
    parser.add_argument("--batch-size", type=int, default=1, help="images per step (paper: 1)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, preset: {args.preset}")
    times = {}
    for variant in ("no-dsg", "dsg"):
        config = RunConfig.from_flat(
            {
                "model": "dsg", "dsg_variant": variant, "preset": args.preset,
                "data_root": args.data, "batch_size": args.batch_size, "device": str(device),
                "warmup_iters": 0,
            }
        )  # fmt: skip
        times[variant], peak = time_steps(config, args.steps, args.warmup)
        peak_text = "-" if peak != peak else f"{peak:.2f} GiB"
        print(f"{variant:7s} {times[variant]:8.3f} s/step  peak {peak_text}", flush=True)
    ratio = times["dsg"] / times["no-dsg"]
    print(
        f"\nwith / without the DSG component: {ratio:.2f}x step time "
        f"(supplement: {SUPPLEMENT_RATIO:.2f}x)"
    )
    table = format_complexity_table(complexity_table("paper"))
    print(f"\nTable 1 (paper preset, sgstudy complexity):\n{table}")


if __name__ == "__main__":
    main()
