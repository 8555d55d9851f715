"""A study's runs, read back from MLflow into pandas frames.

``load_study_results`` makes one ``search_runs`` query per page of the study's experiment
(no per-run metric calls: the final value of a metric is the one ``run.data.metrics`` holds,
the value at the highest step) and reads each finished trial's per-predicate artifact (in
place from a local artifact folder, else downloaded).

Frames of ``StudyResults``:

- ``runs``: one row per FINISHED trial run. Columns ``study``, ``launch`` (the parent run
  id), ``run_id``, ``run_name``, ``model``, ``protocol``, ``align`` (bool), ``p`` and
  ``lambda`` (floats; NaN for a baseline, whose logged p and λ are unused), ``seed``
  (nullable int), ``status``, ``family``, ``method`` and ``method_tex`` (``reports.methods``),
  then one float column per metric of ``METRIC_COLUMNS`` (NaN when the run never logged it).
- ``excluded``: the trial runs left out, with a ``reason``: FAILED, KILLED, still RUNNING,
  FINISHED before its last epoch (metric ``epoch`` below param ``epochs``, e.g. stopped by a
  scheduler), FINISHED without any recall metric (IoU metric for a referring-relationship
  model), or without a ``model`` param.
  Column ``last_change`` (``metric_names.LAST_CHANGE``): the run's selection metric (its task's
  primary metric) at its last logged epoch minus its value ``CONVERGENCE_EPOCHS`` epochs
  before, from the metric's history (one history call per finished run); NaN for a shorter run.
- ``per_predicate``: a long frame of the finished runs' artifacts, one row per
  (run, predicate, K): ``run_id``, ``method``, ``predicate``, ``predicate_id`` (1-based id
  order of the artifact), ``train_count``, ``eval_count``, ``group`` (``head``/``body``/
  ``tail``, or ``""``), ``k``, ``recall`` and ``ng_recall`` (fractions in [0, 1]). A run
  without the artifact simply has no rows.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import pandas as pd

from reports import methods
from sgstudy import metric_names
from sgstudy.errors import UserError
from sgstudy.tasks import REFERRING, task_of
from sgstudy.tracking_layout import (
    PARENT_TAG,
    PER_PREDICATE_ARTIFACT,
    ROLE_STUDY,
    ROLE_TAG,
    ROLE_TRIAL,
)

METRIC_COLUMNS: tuple[str, ...] = (
    *metric_names.all_recall_keys(),
    *metric_names.all_group_keys(),
    *metric_names.REFERRING_METRICS,
    *metric_names.LOSS_TERMS,
    metric_names.TOTAL_LOSS,
    *metric_names.DIAGNOSTICS,
)
# Short, fail-fast HTTP settings: a report against a dead server should say so in seconds,
# not after MLflow's default of 7 retries with exponential backoff and 120 s timeouts.
# The progress bar would print one line per downloaded artifact.
MLFLOW_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
SERVER_TIMEOUT_S = 5.0
SEARCH_PAGE_SIZE = 1000
DOWNLOAD_THREADS = 8
EPOCH_METRIC = "epoch"
EPOCHS_PARAM = "epochs"
RUN_COLUMNS = (
    "study", "launch", "run_id", "run_name", "model", "protocol", "align", "p", "lambda",
    "dsg_variant", "gpi_aggregation", "seed", "status", "start_time",
)  # fmt: skip
PER_PREDICATE_COLUMNS = (
    "run_id", "method", "predicate", "predicate_id", "train_count", "eval_count", "group", "k",
    "recall", "ng_recall",
)  # fmt: skip


@dataclass(frozen=True)
class StudyResults:
    """Everything the tables and figures need, read once.

    parent_run_ids: the study's parent runs (one per launch), oldest first.
    methods:        method labels of ``runs`` in table order (``reports.methods``).
    notes:          warnings for the report, e.g. a config param that differs within a method.
    """

    study: str
    tracking_uri: str
    experiment_id: str
    runs: pd.DataFrame
    excluded: pd.DataFrame
    per_predicate: pd.DataFrame
    parent_run_ids: tuple[str, ...]
    methods: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def latest_parent_run_id(self) -> str | None:
        return self.parent_run_ids[-1] if self.parent_run_ids else None


@contextmanager
def quiet_fast_mlflow() -> Iterator[None]:
    """Sets ``MLFLOW_ENV_DEFAULTS`` for the duration, keeping any value the user set."""
    added = [key for key in MLFLOW_ENV_DEFAULTS if key not in os.environ]
    for key in added:
        os.environ[key] = MLFLOW_ENV_DEFAULTS[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def make_client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` for a store that exists: a SQLite URI must name an existing file
    (MLflow would create an empty one), an HTTP server must answer."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///") :]).expanduser()
        if not path.is_file():
            raise UserError(f"tracking URI {tracking_uri}: no MLflow database at {path}")
    if urlparse(tracking_uri).scheme in ("http", "https"):
        check_server(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def check_server(tracking_uri: str) -> None:
    """Raises ``UserError`` unless something answers HTTP at ``tracking_uri`` in time."""
    timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", SERVER_TIMEOUT_S))
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered; whatever is wrong, MLflow's own error will say
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"tracking server {tracking_uri} is unreachable ({reason})") from exc


@contextmanager
def tracking_errors(tracking_uri: str) -> Iterator[None]:
    """Turns a failure to talk to the tracking store into one ``UserError`` line."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        first_line = str(exc.message if hasattr(exc, "message") else exc).splitlines()[0]
        raise UserError(f"tracking store {tracking_uri} failed: {first_line[:300]}") from exc
    except OSError as exc:
        raise UserError(f"tracking store {tracking_uri} is unreachable ({exc})") from exc


def load_study_results(study: str, tracking_uri: str) -> StudyResults:
    """Reads every run of ``study`` from the tracking store at ``tracking_uri``.

    Raises ``UserError`` for an unknown study, a study without finished trial runs, or a
    store that cannot be reached.
    """
    with quiet_fast_mlflow(), tracking_errors(tracking_uri):
        client = make_client(tracking_uri)
        experiment_id = find_experiment(client, study, tracking_uri)
        all_runs = search_all_runs(client, experiment_id)
        parents = [r for r in all_runs if r.data.tags.get(ROLE_TAG) == ROLE_STUDY]
        trials = [r for r in all_runs if r.data.tags.get(ROLE_TAG) == ROLE_TRIAL]
        rows = [trial_row(study, run) for run in trials]
        kept = [row for row in rows if row["reason"] is None]
        if not kept:
            reasons = Counter(str(row["reason"]) for row in rows)
            found = "; ".join(f"{n} × {reason}" for reason, n in sorted(reasons.items()))
            raise UserError(
                f"study {study!r} has no finished trial runs to report "
                f"({len(rows)} trial run{'' if len(rows) == 1 else 's'}"
                f"{': ' + found if found else ''})"
            )
        runs = frame(kept, metrics=True)
        runs[metric_names.LAST_CHANGE] = last_changes(client, runs)
        excluded = frame([row for row in rows if row["reason"] is not None], metrics=False)
        swept = methods.swept_params(runs)
        several_protocols = runs["protocol"].nunique() > 1
        runs = methods.add_method_columns(runs, swept, several_protocols)
        excluded = methods.add_method_columns(excluded, swept, several_protocols)
        uris = {r.info.run_id: r.info.artifact_uri for r in trials}
        artifacts = load_artifacts(client, {run_id: uris[run_id] for run_id in runs["run_id"]})
    per_predicate = per_predicate_frame(artifacts, dict(zip(runs["run_id"], runs["method"])))
    parents.sort(key=lambda run: run.info.start_time or 0)
    return StudyResults(
        study=study,
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        runs=runs,
        excluded=excluded,
        per_predicate=per_predicate,
        parent_run_ids=tuple(run.info.run_id for run in parents),
        methods=tuple(methods.method_order(runs)),
        notes=tuple(
            methods.mixed_config_notes(runs, {r.info.run_id: r.data.params for r in trials})
        ),
    )


def find_experiment(client: Any, study: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(study)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        known = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        listing = ", ".join(known) if known else "none"
        state = "is deleted" if experiment is not None else "does not exist"
        raise UserError(
            f"study {study!r} {state} in tracking store {tracking_uri} (studies there: {listing})"
        )
    return experiment.experiment_id


def search_all_runs(client: Any, experiment_id: str) -> list[Any]:
    """All active runs of the experiment, page by page (parents and trials in one query)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=SEARCH_PAGE_SIZE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def trial_row(study: str, run: Any) -> dict[str, Any]:
    """The frame row of one trial run, with ``reason`` set when it is excluded."""
    params, metrics = run.data.params, run.data.metrics
    align = parse_bool(params.get("align", "False"))
    row: dict[str, Any] = {
        "study": study,
        "launch": run.data.tags.get(PARENT_TAG, ""),
        "run_id": run.info.run_id,
        "run_name": run.info.run_name or "",
        "model": params.get("model", ""),
        "protocol": params.get("protocol", ""),
        "align": align,
        "p": parse_float(params.get("mask_ratio")) if align else math.nan,
        "lambda": parse_float(params.get("align_weight")) if align else math.nan,
        "dsg_variant": params.get("dsg_variant", ""),
        "gpi_aggregation": params.get("gpi_aggregation", ""),
        "seed": parse_int(params.get("seed")),
        "status": run.info.status,
        "start_time": run.info.start_time,
        "reason": exclusion_reason(run.info.status, params, metrics),
    }
    row.update({key: float(metrics[key]) for key in METRIC_COLUMNS if key in metrics})
    return row


def last_changes(client: Any, runs: pd.DataFrame) -> list[float]:
    """``change_over_last_epochs`` of each run's selection metric, in ``runs`` order."""

    def fetch(item: tuple[str, str]) -> float:
        run_id, model = item
        key = task_of(model).primary_metric
        history = {metric.step: metric.value for metric in client.get_metric_history(run_id, key)}
        return change_over_last_epochs(history, metric_names.CONVERGENCE_EPOCHS)

    with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
        return list(pool.map(fetch, zip(runs["run_id"], runs["model"])))


def change_over_last_epochs(history: dict[int, float], epochs: int) -> float:
    """``history`` (epoch → value) at its last epoch minus its value ``epochs`` epochs before;
    NaN when that epoch was never logged."""
    if not history:
        return math.nan
    last = max(history)
    earlier = history.get(last - epochs)
    return math.nan if earlier is None else history[last] - earlier


def exclusion_reason(status: str, params: dict[str, str], metrics: dict[str, float]) -> str | None:
    if status in ("FAILED", "KILLED"):
        return f"run {status}"
    if status != "FINISHED":
        return f"unfinished (status {status})"
    if not params.get("model"):
        return "no 'model' param"
    referring = task_of(params["model"]).name == REFERRING
    scored = metric_names.REFERRING_METRICS if referring else metric_names.all_recall_keys()
    if not any(key in metrics for key in scored):
        return f"finished without any {'IoU' if referring else 'recall'} metric"
    last_epoch, epochs = metrics.get(EPOCH_METRIC), parse_int(params.get(EPOCHS_PARAM))
    if last_epoch is not None and epochs is not None and int(last_epoch) < epochs:
        return f"stopped at epoch {int(last_epoch)} of {epochs}"
    return None


def frame(rows: list[dict[str, Any]], metrics: bool) -> pd.DataFrame:
    """Rows as a frame with fixed columns: metric columns for kept runs, ``reason`` otherwise."""
    columns = list(RUN_COLUMNS) + (list(METRIC_COLUMNS) if metrics else ["reason"])
    table = pd.DataFrame(rows, columns=columns)
    table["align"] = table["align"].astype(bool)
    table["seed"] = table["seed"].astype("Int64")
    for key in ("p", "lambda", *(METRIC_COLUMNS if metrics else ())):
        table[key] = table[key].astype(float)
    return table.sort_values(["start_time", "run_id"], kind="stable").reset_index(drop=True)


def load_artifacts(client: Any, artifact_uris: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``run_id -> per-predicate record`` for the runs that logged one.

    A local artifact store is read in place (one file read per run); any other store is
    downloaded through the client, a few runs at a time.
    """
    with tempfile.TemporaryDirectory(prefix="sgstudy-report-") as tmp:

        def fetch(item: tuple[str, str]) -> tuple[str, dict[str, Any] | None]:
            run_id, uri = item
            local = local_artifact_path(uri)
            if local is None:
                local = download_artifact(client, run_id, Path(tmp) / run_id)
            return run_id, read_record(run_id, local)

        with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
            fetched = list(pool.map(fetch, artifact_uris.items()))
    return {run_id: record for run_id, record in fetched if record is not None}


def local_artifact_path(artifact_uri: str) -> Path | None:
    """The artifact file of a run whose store is a local folder, else ``None``."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path)) / PER_PREDICATE_ARTIFACT
    if parsed.scheme == "" and Path(artifact_uri).is_absolute():
        return Path(artifact_uri) / PER_PREDICATE_ARTIFACT
    return None


def download_artifact(client: Any, run_id: str, folder: Path) -> Path | None:
    from mlflow.exceptions import MlflowException

    folder.mkdir(parents=True, exist_ok=True)
    try:
        return Path(client.download_artifacts(run_id, PER_PREDICATE_ARTIFACT, str(folder)))
    except (MlflowException, OSError):
        return None  # a run that never reached its first evaluation logged none


def read_record(run_id: str, path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"run {run_id}: unreadable {PER_PREDICATE_ARTIFACT} ({exc})") from exc


def per_predicate_frame(
    artifacts: dict[str, dict[str, Any]], method_of: dict[str, str]
) -> pd.DataFrame:
    """The long per-predicate frame (module docstring) of the downloaded records."""
    rows: list[tuple[Any, ...]] = []
    for run_id, record in artifacts.items():
        try:
            names = [str(name) for name in record["predicates"]]
            group_of = {
                str(name): group for group, members in record["groups"].items() for name in members
            }
            for k_text, recalls in record["recall"].items():
                ng_recalls = record.get("ng_recall", {}).get(k_text, [math.nan] * len(names))
                for i, name in enumerate(names):
                    rows.append((
                        run_id, method_of[run_id], name, i + 1, int(record["train_counts"][i]),
                        int(record["eval_counts"][i]), group_of.get(name, ""), int(k_text),
                        float(recalls[i]), float(ng_recalls[i]),
                    ))  # fmt: skip
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise UserError(
                f"run {run_id}: {PER_PREDICATE_ARTIFACT} does not follow the schema ({exc!r})"
            ) from exc
    return pd.DataFrame(rows, columns=list(PER_PREDICATE_COLUMNS))


def parse_bool(text: str) -> bool:
    return str(text).strip().lower() in ("true", "1", "yes")


def parse_float(text: str | None) -> float:
    try:
        return float(text) if text is not None else math.nan
    except ValueError:
        return math.nan


def parse_int(text: str | None) -> int | None:
    try:
        return int(float(text)) if text not in (None, "", "None") else None
    except ValueError:
        return None
