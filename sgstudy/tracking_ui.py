"""How a study reads in MLflow's web UI: what each run is called and says, and a runs view that
opens on the trials with their recall columns.

MLflow 3's UI decides between its GenAI pages (traces, sessions, judges) and its model-training
pages per experiment: MLflow 3.0-3.16 read the experiment tag ``mlflow.experimentKind``; 3.17
reads a ``workflowType`` query parameter of the page URL (else the last choice kept in the
browser, GenAI by default). sgstudy sets both: the tag on every experiment it creates, the
parameter in the URL ``sgstudy ui`` prints.

The runs page keeps its filter, sort order and columns in the browser only, so a first visit
shows the collapsed parent run and no metric column. A saved view fixes that: MLflow 3.17 keeps
saved views as experiment tags ``mlflow.sharedViewState.<key>`` holding
``{"name", "createdAt", "updatedAt", "state"}`` (``state`` a JSON string of the page's search
and column state), lists them in the page's "Views" menu and opens one given
``viewStateShareKey=<key>`` in the URL. The view sgstudy saves filters on the trial runs (a
filter also shows children flat, not nested under their parent), sorts them by mR@100 and shows
the recall metrics and the variant, seed, p and λ params as columns.

Imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any
from urllib.parse import urlencode

from sgstudy.tracking_layout import ROLE_TAG, ROLE_TRIAL

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# The run's description, shown on its page (MLflow's own tag for the run note).
NOTE_TAG = "mlflow.note.content"
SAVED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_NAME = "sgstudy: trials by mR@100"
VIEW_METRICS = ("mR_50", "mR_100", "R_50", "R_100")
VIEW_PARAMS = ("variant", "seed", "mask_ratio", "align_weight")
VIEW_SORT_METRIC = "mR_100"
# The UI's query parameter that picks its model-training pages (MLflow >= 3.17).
WORKFLOW_PARAM = {"workflowType": "machine_learning"}
VARIANT_PARAM = "variant"


def trial_run_name(variant: str, seed: int) -> str:
    """``trial_run_name("p=0.1", 0) == "p=0.1 seed 0"``."""
    return f"{variant} seed {seed}"


def trial_description(params: dict[str, Any], variant: str, study: str) -> str:
    """What a trial run is, in words, from its run-config params (``RunConfig.to_params``)."""
    model = {"motifs": "Neural Motifs", "sgtr": "SGTR", "dsg": "DSG"}.get(
        str(params.get("model")), str(params.get("model"))
    )
    what = f"{model}, {str(params.get('protocol', '')).upper() or 'protocol unknown'}"
    if params.get("align") in (True, "True", "true"):
        what += (
            f", with self-supervised relation alignment: a share p = {params.get('mask_ratio')} "
            f"of the relations masked in the auxiliary branch, alignment loss weight "
            f"λ = {params.get('align_weight')}"
        )
    else:
        what += ", without relation alignment (the baseline)"
    return (
        f"Trial '{variant}' of study {study}: {what}. Seed {params.get('seed')}, preset "
        f"{params.get('preset')}, {params.get('epochs')} epochs; the metrics are validation "
        f"recalls logged once per epoch (mR_50 is mR@50)."
    )


def launch_description(params: dict[str, Any]) -> str:
    """What a study's parent run is, in words, from its launch params."""
    variants = params.get("variants", "")
    grid = "a TPE search over p and λ" if variants == "search" else f"the variants {variants}"
    return (
        f"Launch '{params.get('launch')}' of study {params.get('study')}: "
        f"{params.get('num_trials')} trials of {grid}, seeds {params.get('seeds')}, preset "
        f"{params.get('preset')}, {params.get('epochs')} epochs each. Each trial is a child run "
        f"named '<variant> seed <s>'."
    )


def runs_view_state() -> dict[str, Any]:
    """The runs page state of sgstudy's saved view (keys of MLflow's page state)."""
    columns = [f"metrics.`{key}`" for key in VIEW_METRICS]
    columns += [f"params.`{key}`" for key in VIEW_PARAMS]
    return {
        "searchFilter": f"tags.`{ROLE_TAG}` = '{ROLE_TRIAL}'",
        "orderByKey": f"metrics.`{VIEW_SORT_METRIC}`",
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": columns,
    }


def view_key(state: dict[str, Any]) -> str:
    """A key that names ``state``: the same state always gets the same key."""
    text = json.dumps(state, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def mark_experiment(client: Any, experiment_id: str) -> str:
    """Tags the experiment as model training and saves sgstudy's runs view; returns its key.

    Idempotent: a view already saved under the key is left as it is.
    """
    experiment = client.get_experiment(experiment_id)
    tags = experiment.tags
    if tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    state = runs_view_state()
    key = view_key(state)
    if f"{SAVED_VIEW_TAG_PREFIX}{key}" not in tags:
        now = int(time.time() * 1000)
        envelope = {
            "name": VIEW_NAME,
            "createdAt": now,
            "updatedAt": now,
            "state": json.dumps(state, sort_keys=True),
        }
        client.set_experiment_tag(
            experiment_id, f"{SAVED_VIEW_TAG_PREFIX}{key}", json.dumps(envelope)
        )
    return key


def runs_page_url(base_url: str, experiment_id: str, key: str | None) -> str:
    """The UI address of the experiment's runs page, opened on the saved view ``key``."""
    query = dict(WORKFLOW_PARAM)
    if key is not None:
        query["viewStateShareKey"] = key
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def study_pages(client: Any, base_url: str, study: str | None) -> list[tuple[str, str]]:
    """``(study, runs page URL)`` of ``study``, or of every experiment but MLflow's Default.

    Marks each experiment (``mark_experiment``) so that its URL opens on the saved view.
    Raises ``UserError`` naming the studies in the store when ``study`` is not one of them.
    """
    from sgstudy.errors import UserError

    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    if study is not None:
        chosen = [e for e in experiments if e.name == study]
        if not chosen:
            known = ", ".join(sorted(e.name for e in experiments)) or "none"
            raise UserError(f"no study {study!r} in this MLflow store (studies there: {known})")
        experiments = chosen
    pages = []
    for experiment in sorted(experiments, key=lambda e: e.name):
        key = mark_experiment(client, experiment.experiment_id)
        pages.append((experiment.name, runs_page_url(base_url, experiment.experiment_id, key)))
    return pages
