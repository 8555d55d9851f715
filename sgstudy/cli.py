"""The ``sgstudy`` command line.

Each subcommand translates flags into the typed config once and calls one
function of the layer that does the work. Heavy imports (torch, ray, mlflow)
happen inside the handlers so that ``sgstudy --help`` is instant. A
``UserError`` anywhere becomes one ``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from sgstudy.errors import UserError
from sgstudy.metric_names import (
    RECALL_FAMILIES,
    RECALL_KS,
    REFERRING_METRICS,
    display_name,
    recall_key,
)
from sgstudy.tasks import REFERRING, SCENE_GRAPH, Task, dsg_label, task_of

if TYPE_CHECKING:
    from sgstudy.config import RunConfig

EXIT_USAGE = 2


def comma_separated(convert: Callable[[str], Any], noun: str) -> Callable[[str], tuple]:
    """An argparse type for ``0,1,2``-style lists; a bad element is one argparse error."""

    def parse(text: str) -> tuple:
        try:
            return tuple(convert(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {noun}, got {text!r}"
            ) from None

    return parse


comma_ints = comma_separated(int, "integers")
comma_floats = comma_separated(float, "numbers")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message}\n")


def format_recall_table(metrics: dict[str, float], title: str = "") -> str:
    """A fixed-width table of the recall families at each K, in percent."""
    header = f"{'':8s}" + "".join(f"{'@' + str(k):>8s}" for k in RECALL_KS)
    lines = [title] if title else []
    lines.append(header)
    for family in RECALL_FAMILIES:
        cells = [metrics.get(recall_key(family, k)) for k in RECALL_KS]
        if all(c is None for c in cells):
            continue
        name = display_name(recall_key(family, RECALL_KS[0])).split("@")[0]
        lines.append(
            f"{name:8s}" + "".join(f"{'-' if c is None else f'{100 * c:.1f}':>8s}" for c in cells)
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- data
def cmd_data_synth(args: argparse.Namespace) -> None:
    from sgstudy.data.synthetic import generate_synthetic_dataset
    from sgstudy.paths import check_writable_folder

    out = generate_synthetic_dataset(
        check_writable_folder(Path(args.out), "--out"),
        args.num_images,
        args.image_size,
        args.seed,
        progress=True,
        # Unset flags keep the generator's defaults (not imported here: the CLI starts light).
        **{
            name: value
            for name, value in (
                ("test_fraction", args.test_fraction),
                ("val_fraction", args.val_fraction),
            )
            if value is not None
        },
    )
    print(f"synthetic dataset written to {out}")


def cmd_data_synth_rr(args: argparse.Namespace) -> None:
    from sgstudy.data.referring_synth import derive_referring_dataset

    counts = derive_referring_dataset(Path(args.source), Path(args.out), args.image_dir)
    print(
        f"referring-relationship dataset written to {args.out}: {counts['train_images']} train "
        f"and {counts['test_images']} test images, {counts['relations']} relations"
    )


def cmd_data_check(args: argparse.Namespace) -> None:
    from sgstudy.data.check import check_dataset

    print(check_dataset(Path(args.root), args.image_dir, args.num_val_images))


def format_referring_table(rows: dict[str, dict[str, float]], title: str = "") -> str:
    """One row per method of the referring-relationship metrics, in percent."""
    keys = REFERRING_METRICS
    width = max([24, *(len(name) + 2 for name in rows)])
    lines = [title] if title else []
    lines.append(f"{'':{width}s}" + "".join(f"{display_name(k):>13s}" for k in keys))
    for name, metrics in rows.items():
        lines.append(f"{name:{width}s}" + "".join(f"{100 * metrics[k]:13.1f}" for k in keys))
    return "\n".join(lines)


def format_task_metrics(task: Task, metrics: dict[str, float], title: str) -> str:
    """The metrics table of a run of ``task``."""
    if task.name == REFERRING:
        return format_referring_table({"": metrics}, title)
    return format_recall_table(metrics, title)


# ---------------------------------------------------------------- baseline
def cmd_baseline(args: argparse.Namespace) -> None:
    from sgstudy.data.referring_format import is_referring_dataset

    if is_referring_dataset(args.data):
        referring_baselines(args)
        return
    import torch

    from sgstudy.config import DataConfig, ModelConfig, RunConfig
    from sgstudy.data.statistics import compute_statistics
    from sgstudy.engine import evaluate
    from sgstudy.errors import ConfigError
    from sgstudy.models.frequency import DetectionFrequencyBaseline, FrequencyBaseline
    from sgstudy.training import load_split, make_evaluator, make_loader

    if (args.protocol == "sgdet") != (args.detector is not None):
        raise ConfigError("--detector goes with --protocol sgdet, and sgdet needs --detector")
    config = RunConfig(
        model=ModelConfig(protocol=args.protocol),
        data=DataConfig(root=args.data, num_val_images=args.num_val_images),
    )
    statistics = compute_statistics(load_split(config, "train"))
    model = FrequencyBaseline.from_statistics(statistics)
    what = "PredCls"
    if args.detector is not None:
        from sgstudy.models.detector import load_any_detector

        detector = load_any_detector(args.detector, list(statistics.object_classes))
        model = DetectionFrequencyBaseline(model, detector)
        what = f"SGDet on the detections of {args.detector}"
    loader = make_loader(load_split(config, args.split), config)
    result = evaluate(model, loader, make_evaluator(config, statistics), torch.device("cpu"))
    print(
        format_recall_table(
            result.metrics, f"Frequency baseline, {what}, {args.split} split ({args.data})"
        )
    )


def referring_baselines(args: argparse.Namespace) -> None:
    """The random-box baseline, and the class-only heuristic when ``--detector`` is given."""
    import torch

    from sgstudy.config import RunConfig
    from sgstudy.engine import evaluate
    from sgstudy.models.detector import load_detector
    from sgstudy.models.referring_baselines import ClassOnlyBaseline, RandomBoxBaseline
    from sgstudy.training import load_split, make_evaluator, make_loader, pipeline_of

    config = RunConfig.from_flat(
        {"model": "dsg", "data_root": args.data, "image_dir": args.image_dir,
         "num_val_images": args.num_val_images}
    )  # fmt: skip
    statistics = pipeline_of(config).compute_statistics(load_split(config, "train"))
    models = {"random boxes": RandomBoxBaseline(seed=args.seed)}
    if args.detector:
        detector = load_detector(args.detector, statistics.object_classes)
        models["class-only heuristic"] = ClassOnlyBaseline(detector, args.score_threshold)
    loader = make_loader(load_split(config, args.split), config)
    rows = {
        name: evaluate(
            model, loader, make_evaluator(config, statistics), torch.device("cpu")
        ).metrics
        for name, model in models.items()
    }
    print(
        format_referring_table(
            rows, f"Referring-relationship baselines, {args.split} split ({args.data})"
        )
    )
    if not args.detector:
        print("(the class-only heuristic needs --detector DET.pt from sgstudy train-detector)")


# ---------------------------------------------------------------- training
def run_config_from_args(args: argparse.Namespace) -> object:
    from sgstudy.config import FAMILY_PROTOCOLS, RunConfig

    flat = {
        "model": args.model,
        # Without --protocol: PredCls, or the one protocol a family runs (SGTR: SGDet).
        "protocol": args.protocol or FAMILY_PROTOCOLS.get(args.model, ("predcls",))[0],
        "preset": args.preset,
        "align": args.align,
        "mask_ratio": args.mask_ratio,
        "align_weight": args.align_weight,
        "masked_input": args.masked_input,
        "align_target": args.align_target,
        "align_mask_unit": args.align_mask_unit,
        "align_projection_head": not args.no_align_projection_head,
        "dsg_variant": args.dsg_variant,
        "gpi_aggregation": args.gpi_aggregation,
        "detector_checkpoint": args.detector,
        "backbone_weights": args.backbone_weights,
        "data_root": args.data,
        "image_dir": args.image_dir,
        "num_val_images": args.num_val_images,
        "seed": args.seed,
        "device": args.device,
        "amp": not args.no_amp,
        "num_workers": args.num_workers,
        "image_cache": args.cache_images,
    }
    optim = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_steps": args.lr_steps,
    }
    flat.update({k: v for k, v in optim.items() if v is not None})
    return RunConfig.from_flat(flat)


def run_title(config: RunConfig) -> str:
    """``motifs predcls`` for scene graphs; ``dsg no-DSG`` for referring relationships, whose
    runs have no protocol but a variant."""
    if task_of(config.model.name).name == SCENE_GRAPH:
        return f"{config.model.name} {config.model.protocol}"
    dsg = config.model.dsg
    return f"{config.model.name} {dsg_label(dsg.variant, dsg.gpi_aggregation)}"


def cmd_train(args: argparse.Namespace) -> None:
    from sgstudy.engine import unwrap
    from sgstudy.paths import check_writable_folder
    from sgstudy.training import (
        CHECKPOINT_NAME,
        CONFIG_NAME,
        METRICS_NAME,
        MODEL_NAME,
        TrainingSession,
        write_json,
    )

    config = run_config_from_args(args)
    out = check_writable_folder(Path(args.out), "--out")
    checkpoint = out / CHECKPOINT_NAME
    resume = checkpoint if args.resume and checkpoint.is_file() else None
    session = TrainingSession.start(config, resume, progress=not args.quiet)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_NAME, config.to_params())
    # What the model is made of and what its alignment branch masks and aligns.
    write_json(out / MODEL_NAME, unwrap(session.model).describe())
    history = []
    result = None
    while not session.done:
        result = session.run_epoch()
        session.save(checkpoint)
        m = result.metrics
        shown = "  ".join(
            f"{display_name(k)} {100 * m[k]:.1f}" for k in session.task.progress_metrics
        )
        print(
            f"epoch {result.epoch}/{config.optim.epochs}  loss {result.losses['loss']:.4f}  "
            f"{shown}  ({result.seconds:.0f} s)",
            flush=True,
        )
        history.append({"epoch": result.epoch, **result.losses, **m})
        write_json(
            out / METRICS_NAME,
            {"val": m, "history": history, "per_predicate": result.per_predicate},
        )
    if result is None:
        print(f"{out} already holds {session.epoch} epochs; nothing to train")
        return
    print(format_task_metrics(session.task, result.metrics, f"\n{run_title(config)}, val"))
    print(f"run written to {out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from sgstudy.training import (
        CHECKPOINT_NAME,
        TrainingSession,
        load_split,
        make_loader,
        read_run_config,
        write_json,
    )

    run_dir = Path(args.run_dir)
    config = read_run_config(run_dir)
    session = TrainingSession.start(config, run_dir / CHECKPOINT_NAME, progress=not args.quiet)
    result = session.evaluate(make_loader(load_split(config, args.split), config), args.split)
    write_json(
        run_dir / f"metrics_{args.split}.json",
        {
            args.split: result.metrics,
            "per_predicate": session.pipeline.artifact_of(result, session.statistics),
        },
    )
    title = f"{run_title(config)}, {args.split} (epoch {session.epoch})"
    print(format_task_metrics(session.task, result.metrics, title))


def cmd_complexity(args: argparse.Namespace) -> None:
    from sgstudy.models.dsg.complexity import complexity_table, format_complexity_table

    if args.num_entities < 1:
        raise UserError(f"--num-entities must be >= 1, got {args.num_entities}")
    rows = complexity_table(args.preset, args.num_entities)
    print(f"DSG supplement Table 1, measured ({args.preset} preset)\n")
    print(format_complexity_table(rows))


def cmd_train_detector(args: argparse.Namespace) -> None:
    from sgstudy.config import DataConfig
    from sgstudy.detector_training import train_detector

    data = DataConfig(root=args.data, image_dir=args.image_dir, num_val_images=args.num_val_images)
    result = train_detector(
        data,
        args.preset,
        Path(args.out),
        args.epochs,
        args.seed,
        args.weights,
        args.device,
        kind=args.kind,
    )
    print(json.dumps(result, indent=2))


# ---------------------------------------------------------------- reports
def cmd_report(args: argparse.Namespace) -> None:
    from reports.report import write_report
    from sgstudy.tracking_layout import default_tracking_uri

    outputs = write_report(
        args.study,
        args.tracking_uri or default_tracking_uri(),
        Path(args.out),
        compare=tuple(args.compare) if args.compare else None,
        formats=tuple(f.strip() for f in args.format.split(",") if f.strip()),
        metrics=[m.strip() for m in args.metrics.split(",")] if args.metrics else None,
    )
    print(outputs.main_table)
    for line in outputs.convergence:
        print(line)
    for figure in (path for path in outputs.files if path.suffix == ".png"):
        print(f"figure: {figure}")
    print(f"report written to {outputs.index}")
    if outputs.logged_to:
        print(f"also logged to MLflow run {outputs.logged_to} (artifacts, folder report/)")


# ---------------------------------------------------------------- parser
def add_data_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--data", required=required, help="dataset root (VG150 layout)")
    parser.add_argument("--image-dir", help="image folder (default: DATA/VG_100K)")
    parser.add_argument(
        "--num-val-images",
        type=int,
        help="non-test images held out as val (default: the dataset's meta file, else 5000)",
    )


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    from sgstudy.config import (
        ALIGN_TARGETS,
        DSG_VARIANTS,
        GPI_AGGREGATIONS,
        MASK_UNITS,
        MASKED_INPUTS,
        MODELS,
        PRESETS,
        PROTOCOLS,
        AlignConfig,
    )

    p = subparsers.add_parser("train", help="train one relation model, print val metrics")
    p.add_argument("--model", choices=MODELS, default="motifs")
    p.add_argument("--protocol", choices=PROTOCOLS, help="default predcls (sgdet for sgtr)")
    p.add_argument("--preset", choices=PRESETS, default="tiny")
    p.add_argument("--align", action="store_true", help="add self-supervised relation alignment")
    p.add_argument("--mask-ratio", type=float, default=0.1, help="p, masking ratio (default 0.1)")
    p.add_argument("--align-weight", type=float, default=10.0, help="λ, loss weight (default 10)")
    p.add_argument("--masked-input", choices=MASKED_INPUTS, default=AlignConfig.masked_input)
    p.add_argument("--align-target", choices=ALIGN_TARGETS, default=AlignConfig.target)
    p.add_argument(
        "--align-mask-unit",
        choices=MASK_UNITS,
        default=AlignConfig.mask_unit,
        help="mask whole relations (default) or single feature elements",
    )
    p.add_argument(
        "--no-align-projection-head",
        action="store_true",
        help="representation alignment on the shared classifier input (no projection head)",
    )
    p.add_argument("--dsg-variant", choices=DSG_VARIANTS, default="dsg", help="DSG ablation")
    p.add_argument("--gpi-aggregation", choices=GPI_AGGREGATIONS, default="feature-attention")
    p.add_argument("--detector", help="detector checkpoint from train-detector (needed for sgdet)")
    p.add_argument("--backbone-weights", help="local backbone weights file")
    add_data_flags(p)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument(
        "--lr-steps", type=comma_ints, help="epochs after which the lr is multiplied by 0.1"
    )
    p.add_argument(
        "--num-workers", type=int, help="data loader worker processes (default: CPUs minus one)"
    )
    p.add_argument(
        "--cache-images", action="store_true",
        help="read decoded images from the node-local cache (built on first use)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_train)


def build_parser() -> argparse.ArgumentParser:
    from sgstudy import __version__

    parser = OneLineParser(prog="sgstudy", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sgstudy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    data = sub.add_parser("data", help="create or check a dataset")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=OneLineParser)
    synth = data_sub.add_parser("synth", help="render the synthetic scene-graph dataset")
    synth.add_argument("--out", required=True)
    synth.add_argument("--num-images", type=int, default=2000)
    synth.add_argument("--image-size", type=int, default=128)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--test-fraction", type=float, help="share of images in test (0.3)")
    synth.add_argument(
        "--val-fraction", type=float, help="share of the non-test images held out as val (0.43)"
    )
    synth.set_defaults(handler=cmd_data_synth)
    synth_rr = data_sub.add_parser(
        "synth-rr", help="derive a referring-relationship dataset from a VG150-format one"
    )
    synth_rr.add_argument("--from", dest="source", required=True, help="VG150-format dataset")
    synth_rr.add_argument("--out", required=True, help="new folder for the derived dataset")
    synth_rr.add_argument("--image-dir", help="the source's image folder (default: FROM/VG_100K)")
    synth_rr.set_defaults(handler=cmd_data_synth_rr)
    check = data_sub.add_parser("check", help="validate a dataset and print a summary")
    check.add_argument("root")
    check.add_argument("--image-dir")
    check.add_argument("--num-val-images", type=int)
    check.set_defaults(handler=cmd_data_check)

    base = sub.add_parser(
        "baseline",
        help="evaluate the frequency baseline (PredCls, SGDet), or on a referring-relationship "
        "dataset the random-box baseline and the class-only heuristic",
    )
    add_data_flags(base)
    base.add_argument("--split", choices=("val", "test"), default="test")
    base.add_argument("--protocol", choices=("predcls", "sgdet"), default="predcls")
    base.add_argument(
        "--detector",
        help="sgdet: a DETR checkpoint (train-detector --kind detr); referring relationships: "
        "the detector of the class-only heuristic",
    )
    base.add_argument(
        "--score-threshold", type=float, default=0.5, help="class-only: detections kept"
    )
    base.add_argument("--seed", type=int, default=0, help="random-box baseline seed")
    base.set_defaults(handler=cmd_baseline)

    add_train_parser(sub)
    complexity = sub.add_parser(
        "complexity", help="DSG supplement Table 1: parameters and operations, measured"
    )
    complexity.add_argument("--model", choices=("dsg",), default="dsg")
    complexity.add_argument("--preset", choices=("tiny", "paper"), default="paper")
    complexity.add_argument("--num-entities", type=int, default=32, help="n (default 32)")
    complexity.set_defaults(handler=cmd_complexity)

    ev = sub.add_parser("evaluate", help="re-evaluate a trained run's checkpoint")
    ev.add_argument("run_dir")
    ev.add_argument("--split", choices=("val", "test"), default="test")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(handler=cmd_evaluate)

    det = sub.add_parser("train-detector", help="train the object detector on a dataset's boxes")
    add_data_flags(det)
    det.add_argument("--preset", choices=("tiny", "paper"), default="tiny")
    det.add_argument(
        "--kind",
        choices=("faster-rcnn", "detr"),
        default="faster-rcnn",
        help="faster-rcnn (Motifs) or detr (SGTR's entity detector)",
    )
    det.add_argument("--out", required=True)
    det.add_argument("--epochs", type=int, help="default 10; 40 for the tiny DETR")
    det.add_argument("--seed", type=int, default=0)
    det.add_argument("--weights", help="local backbone weights file (nothing downloads)")
    det.add_argument("--device", default="auto")
    det.set_defaults(handler=cmd_train_detector)

    from trainables.cli import register_cli

    register_cli(sub)

    rep = sub.add_parser("report", help="render a study's tables and figures from MLflow")
    rep.add_argument("study")
    rep.add_argument("--tracking-uri", default=None, help="default: sqlite:///./mlflow.db")
    rep.add_argument("--out", default="reports_out")
    rep.add_argument("--compare", nargs=2, metavar=("A", "B"), help="difference plot A − B")
    rep.add_argument("--format", default="md,tex,csv")
    rep.add_argument("--metrics", help="table columns, e.g. R_50,mR_50,mR_100")
    rep.set_defaults(handler=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
