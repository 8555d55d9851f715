"""The study subcommands of ``sgstudy``: ``studies``, ``run``, ``plan`` and ``ui``.

``register_cli`` adds them to the main parser (``sgstudy.cli``). Nothing heavy is imported
here: Ray, Optuna, MLflow and torch load inside the handlers, so ``sgstudy --help`` is instant.
"""

from __future__ import annotations

import argparse

from sgstudy.cli import comma_floats, comma_ints

RUN_EXIT_CODES = """exit status:
  0    every trial finished (also: --resume of a launch that had already finished)
  1    Ray failed the driver (one line says why); --resume continues the launch
  2    bad input, refused before anything ran or was written (one "error:" line)
  3    the launch ended but trials failed ("N of M trials failed: ..." names their runs;
       each FAILED run carries the reason as tag sgstudy.failure and traceback.txt)
  130  interrupted (Ctrl-C): finish the launch with the same command and --resume"""


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1..65535")
    return port


def check_port_free(host: str, port: int) -> None:
    """``UserError`` if something already listens on ``host:port`` (the UI could not bind)."""
    import socket

    from sgstudy.errors import UserError

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(
                f"cannot serve the MLflow UI on {host}:{port} ({exc.strerror}); pick --port"
            ) from None


def cmd_studies(args: argparse.Namespace) -> None:
    from search_spaces import describe_studies

    print(describe_studies())


def options_from_args(args: argparse.Namespace) -> object:
    from trainables.plan import StudyOptions

    return StudyOptions(
        study=args.study,
        data_root=args.data,
        preset=args.preset,
        seeds=args.seeds,
        tracking_uri=args.tracking_uri,
        address=args.address,
        resume=args.resume,
        max_concurrent=args.max_concurrent,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial,
        workers_per_trial=args.workers_per_trial,
        scheduler=None if args.scheduler == "none" else args.scheduler,
        optuna_storage=args.optuna_storage,
        storage_path=args.storage_path,
        epochs=args.epochs,
        lr_steps=args.lr_steps,
        lr=args.lr,
        batch_size=args.batch_size,
        name=args.name,
        values=args.values,
        max_failures=args.max_failures,
        log_checkpoints=args.log_checkpoints,
        detector=args.detector,
        reuse_actors=not args.no_reuse_actors,
        # Ray's status table only when asked: one line per finished trial is printed anyway.
        verbose=1 if args.ray_table else 0,
    )


def print_plan(options: object, args: argparse.Namespace) -> None:
    """Validates the launch, joins (or starts) Ray and prints the plan; Ray stays up."""
    from sgstudy.errors import ConfigError
    from trainables.launch_estimate import format_plan, plan_launch
    from trainables.plan import plan_study
    from trainables.study import connect_ray

    if args.calibration_steps is not None and args.calibration_steps < 2:
        raise ConfigError(f"--calibration-steps must be >= 2, got {args.calibration_steps}")
    if args.price_per_gpu_hour is not None and not args.price_per_gpu_hour >= 0:
        raise ConfigError(f"--price-per-gpu-hour must be >= 0, got {args.price_per_gpu_hour:g}")
    plan = plan_study(options)
    connect_ray(options.address)
    steps = None if args.no_calibration else args.calibration_steps
    print(format_plan(plan_launch(plan, steps, args.price_per_gpu_hour)), flush=True)


def cmd_plan(args: argparse.Namespace) -> None:
    import ray

    try:
        print_plan(options_from_args(args), args)
    finally:
        if ray.is_initialized():
            ray.shutdown()


def cmd_run(args: argparse.Namespace) -> int:
    import sys

    import ray

    from trainables.study import exit_status, failure_summary, run_study

    options = options_from_args(args)
    try:
        # A resume's plan was printed by its launch; the resume checks its settings first.
        if args.dry_run or not options.resume:
            print_plan(options, args)
        if args.dry_run:
            return 0
        outcome = run_study(options)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    print(f"\nMLflow: {outcome.tracking_uri}, experiment {outcome.study}")
    print(f"report: sgstudy report {outcome.study} --tracking-uri {outcome.tracking_uri}")
    if outcome.failed_runs:
        print(failure_summary(outcome), file=sys.stderr)
    if outcome.driver_error:
        print(f"the launch stopped: {outcome.driver_error}", file=sys.stderr)
    return exit_status(outcome)
    if outcome.failed_runs:
        print(failure_summary(outcome), file=sys.stderr)
    if outcome.driver_error:
        print(f"the launch stopped: {outcome.driver_error}", file=sys.stderr)
    return exit_status(outcome)


def cmd_ui(args: argparse.Namespace) -> None:
    import subprocess
    import sys

    from sgstudy.errors import UserError
    from sgstudy.tracking import make_client, resolve_tracking_uri, sqlite_path
    from sgstudy.tracking_ui import study_pages

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///") and not sqlite_path(uri).is_file():
        raise UserError(f"no MLflow store at {sqlite_path(uri)}: run a study first")
    check_port_free("127.0.0.1", args.port)
    base_url = f"http://127.0.0.1:{args.port}"
    pages = study_pages(make_client(uri), base_url, args.study)
    # One worker: a UI for one person; MLflow's default of 4 only competes with the trainings.
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--workers", "1"]
    command += ["--host", "127.0.0.1", "--port", str(args.port)]
    print(f"MLflow UI for {uri} at {base_url} (Ctrl-C stops it)", flush=True)
    for study, url in pages:
        print(f"{study}: {url}", flush=True)
    subprocess.run(command, check=False)


def cmd_dashboard(args: argparse.Namespace) -> None:
    import subprocess

    from reports.dashboard import dashboard_command, require_dashboard, study_storage
    from sgstudy.tracking_layout import default_tracking_uri

    require_dashboard()
    storage, name = args.optuna_storage, None
    if storage is None:
        storage, name = study_storage(args.study, args.tracking_uri or default_tracking_uri())
    shown = f" (Optuna study {name})" if name else ""
    print(
        f"optuna-dashboard for {storage}{shown} at http://127.0.0.1:{args.port} (Ctrl-C stops it)"
    )
    subprocess.run(dashboard_command(storage, args.port), check=False)


def add_run_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a study on Ray Tune, tracked in MLflow",
        description="Run a study on Ray Tune, tracked in MLflow.",
        epilog=RUN_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_launch_flags(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.set_defaults(handler=cmd_run)
    plan = subparsers.add_parser("plan", help="what a launch takes: trials, time, GPU-hours, cost")
    add_launch_flags(plan)
    plan.set_defaults(handler=cmd_plan)


def add_launch_flags(p: argparse.ArgumentParser) -> None:
    """The flags of ``run`` and ``plan``: the launch, its resources, the plan's calibration."""
    p.add_argument("study", help="a study name (sgstudy studies lists them)")
    p.add_argument(
        "--data", required=True, help="dataset root (VG150 layout), same path on every node"
    )
    p.add_argument("--preset", choices=("tiny", "paper"), default="tiny")
    p.add_argument("--seeds", type=comma_ints, default=(0,), help="e.g. 0,1,2,3 (default 0)")
    p.add_argument(
        "--values", type=comma_floats, help="replace the swept p or λ values, e.g. 0.1,0.3"
    )
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument(
        "--lr-steps", type=comma_ints,
        help="epochs after which the lr is multiplied by 0.1, e.g. 7 (default: none)",
    )  # fmt: skip
    p.add_argument("--lr", type=float, help="override the model family's (or preset's) lr")
    p.add_argument(
        "--batch-size", type=int, help="override the model family's (or preset's) batch size"
    )
    p.add_argument(
        "--detector", help="trained detector checkpoint for every trial (SGDet studies need one)"
    )
    p.add_argument(
        "--tracking-uri", help="MLflow: sqlite:///PATH or http://HOST:5000 (default ./mlflow.db)"
    )
    p.add_argument("--address", help="Ray cluster: auto or HOST:PORT (default: start a local Ray)")
    p.add_argument(
        "--storage-path",
        default="ray_results",
        help="trial checkpoints and study state; s3://... on a cluster",
    )
    p.add_argument("--name", help="launch name (default: the study name)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted launch")
    p.add_argument(
        "--max-concurrent", type=int, help="trials at once (default: what the cluster holds)"
    )
    p.add_argument(
        "--gpus-per-trial", type=float, default=0.0, help="fractions pack trials on a GPU"
    )
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument(
        "--workers-per-trial", type=int, default=1, help="> 1: data-parallel (DDP) trials"
    )
    p.add_argument(
        "--scheduler",
        choices=("asha", "none"),
        default="none",
        help="asha: early stopping (search studies)",
    )
    p.add_argument(
        "--optuna-storage", help="Optuna RDB URL (default: optuna.db next to the MLflow db)"
    )
    p.add_argument("--max-failures", type=int, default=2, help="retries of a failing trial")
    p.add_argument(
        "--log-checkpoints", action="store_true", help="store final checkpoints in MLflow"
    )
    p.add_argument(
        "--no-reuse-actors",
        action="store_true",
        help="start a fresh worker process for every trial (default: a finished trial's "
        "worker runs the next one)",
    )
    p.add_argument(
        "--calibration-steps",
        type=int,
        default=8,
        help="timed training steps of the plan's calibration",
    )
    p.add_argument(
        "--no-calibration", action="store_true", help="plan without timing a trial (no times)"
    )
    p.add_argument("--price-per-gpu-hour", type=float, help="the plan shows the launch's cost")
    p.add_argument(
        "--ray-table", action="store_true", help="also print Ray Tune's trial table and results"
    )


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``studies``, ``run`` and ``ui`` to the ``sgstudy`` subcommands."""
    studies = subparsers.add_parser("studies", help="list the studies sgstudy can run")
    studies.set_defaults(handler=cmd_studies)
    add_run_parser(subparsers)
    ui = subparsers.add_parser("ui", help="open the MLflow UI on the study runs")
    ui.add_argument("study", nargs="?", help="print the URL of this study's runs (default: all)")
    ui.add_argument("--tracking-uri", help="default: sqlite:///./mlflow.db")
    ui.add_argument("--port", type=port_number, default=5000)
    ui.set_defaults(handler=cmd_ui)
    dash = subparsers.add_parser(
        "dashboard", help="optuna-dashboard on a study's Optuna storage (optional extra)"
    )
    dash.add_argument("study")
    dash.add_argument("--tracking-uri", help="default: sqlite:///./mlflow.db")
    dash.add_argument("--optuna-storage", help="default: the storage the study's launch used")
    dash.add_argument("--port", type=int, default=8080)
    dash.set_defaults(handler=cmd_dashboard)
