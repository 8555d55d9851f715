"""Method labels of a study's runs, the order of table rows, and ``--compare`` names.

A run's method is its model family plus, for an aligned run, the alignment settings that
vary among the study's aligned runs:

- ``Motifs``: a baseline (``align`` False);
- ``Align-Motifs (p = 0.05)``: only p varies; ``Align-Motifs (λ = 0.1)``: only λ varies;
  ``Align-Motifs (p = 0.1, λ = 10)``: both vary; ``Align-Motifs``: neither (one setting).

When a study mixes protocols the protocol is appended: ``Motifs [SGCls]``. Runs with the same
label are the seeds of one method. Rows go family by family (Motifs, SGTR, DSG), baseline
first, then by the varying values ascending (p before λ).

A DSG run (referring relationships) is labelled by its ablation instead
(``sgstudy.tasks.dsg_label``): ``DSG``, ``DSG (scalar attention)``, ``DSG (sum)``, ``no-DSG``,
``Two-step``; its rows go in that order.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

from sgstudy.errors import UserError
from sgstudy.tasks import dsg_label, dsg_rank

FAMILY_NAMES = {"motifs": "Motifs", "sgtr": "SGTR", "dsg": "DSG"}
PROTOCOL_NAMES = {"predcls": "PredCls", "sgcls": "SGCls", "sgdet": "SGDet"}
SWEEPABLE = ("p", "lambda")
SYMBOLS = {"p": ("p", "p"), "lambda": ("λ", r"\lambda")}  # (text, LaTeX)
# Params that change a result: one method row whose runs differ in any of them mixes configs.
RESULT_PARAMS = (
    "preset", "masked_input", "align_target", "lr", "momentum", "weight_decay", "warmup_iters",
    "max_grad_norm", "batch_size", "epochs", "lr_steps", "data_root", "num_val_images",
    "filter_non_overlap", "detector_checkpoint", "backbone_weights", "dataset_fingerprint",
)  # fmt: skip
SHORT_FORMS = "baseline, align, p=VALUE, lambda=VALUE (or λ=VALUE), p=VALUE,lambda=VALUE"


def swept_params(runs: pd.DataFrame) -> tuple[str, ...]:
    """Which of ``p`` and ``lambda`` take more than one value among the aligned runs."""
    aligned = runs[runs["align"]]
    return tuple(name for name in SWEEPABLE if aligned[name].nunique(dropna=True) > 1)


def format_value(value: float) -> str:
    """``0.05 -> "0.05"``, ``10.0 -> "10"``: as short as the value allows."""
    return f"{value:g}"


def family_name(model: str) -> str:
    return FAMILY_NAMES.get(model, model)


def method_label(
    model: str,
    align: bool,
    values: dict[str, float],
    swept: tuple[str, ...],
    protocol: str | None = None,
    latex: bool = False,
) -> str:
    """The label of one configuration; ``values`` maps ``p``/``lambda`` to floats.

    ``latex=True`` writes the settings in math mode (``$p = 0.05$``) and escapes the text.
    """
    family = family_name(model)
    label = latex_escape(family) if latex else family
    if align:
        label = f"Align-{label}"
        settings = []
        for name in swept:
            text_symbol, tex_symbol = SYMBOLS[name]
            value = format_value(values[name])
            settings.append(f"${tex_symbol} = {value}$" if latex else f"{text_symbol} = {value}")
        if settings:
            label += f" ({', '.join(settings)})"
    if protocol is not None:
        shown = PROTOCOL_NAMES.get(protocol, protocol)
        label += f" [{latex_escape(shown) if latex else shown}]"
    return label


def add_method_columns(
    runs: pd.DataFrame, swept: tuple[str, ...], several_protocols: bool
) -> pd.DataFrame:
    """A copy of ``runs`` with ``family``, ``method`` and ``method_tex`` columns."""
    runs = runs.copy()

    def label(row: Any, latex: bool) -> str:
        if row["model"] == "dsg" and not row["align"]:
            text = dsg_label(row["dsg_variant"], row["gpi_aggregation"])
            return latex_escape(text) if latex else text
        protocol = row["protocol"] if several_protocols else None
        values = {name: row[name] for name in SWEEPABLE}
        return method_label(row["model"], bool(row["align"]), values, swept, protocol, latex)

    runs["family"] = [family_name(model) for model in runs["model"]]
    runs["method"] = [label(row, latex=False) for _, row in runs.iterrows()]
    runs["method_tex"] = [label(row, latex=True) for _, row in runs.iterrows()]
    return runs


def method_order(runs: pd.DataFrame) -> list[str]:
    """Distinct method labels of ``runs`` in table order (module docstring)."""
    families = list(FAMILY_NAMES)
    protocols = list(PROTOCOL_NAMES)

    def key(row: Any) -> tuple[Any, ...]:
        return (
            families.index(row["model"]) if row["model"] in families else len(families),
            row["model"],
            protocols.index(row["protocol"]) if row["protocol"] in protocols else len(protocols),
            bool(row["align"]),
            *(0.0 if math.isnan(row[name]) else row[name] for name in SWEEPABLE),
            dsg_rank(row["dsg_variant"], row["gpi_aggregation"]) if row["model"] == "dsg" else (),
            row["method"],
        )

    first_rows = runs.drop_duplicates("method")
    ordered = sorted((row for _, row in first_rows.iterrows()), key=key)
    return [row["method"] for row in ordered]


def resolve_method(name: str, runs: pd.DataFrame) -> str:
    """The method label ``name`` means: a label (any case), or a short form of
    ``SHORT_FORMS``. Raises ``UserError`` listing the known labels otherwise."""
    known = method_order(runs)
    wanted = " ".join(name.split()).lower()
    for label in known:
        if label.lower() == wanted:
            return label
    candidates = short_form_matches(wanted, runs)
    if candidates is not None and len(candidates) == 1:
        return candidates[0]
    problem = "matches several methods" if candidates else "is not a method of this study"
    raise UserError(
        f"--compare {name!r} {problem}; known methods: {'; '.join(known)} "
        f"(short forms: {SHORT_FORMS})"
    )


def short_form_matches(wanted: str, runs: pd.DataFrame) -> list[str] | None:
    """Labels a short form selects, or ``None`` when ``wanted`` is not a short form."""
    if wanted == "baseline":
        return sorted(set(runs.loc[~runs["align"], "method"]))
    if wanted == "align":
        return sorted(set(runs.loc[runs["align"], "method"]))
    conditions: dict[str, float] = {}
    for part in re.split(r"[,;\s]+", wanted.strip()):
        match = re.fullmatch(r"(p|lambda|λ)=([-+0-9.eE]+)", part)
        if match is None:
            return None
        try:
            conditions["p" if match[1] == "p" else "lambda"] = float(match[2])
        except ValueError:
            return None
    aligned = runs[runs["align"]]
    keep = np.ones(len(aligned), dtype=bool)
    for column, value in conditions.items():
        keep &= np.isclose(aligned[column].to_numpy(dtype=float), value, rtol=1e-9, atol=0.0)
    return sorted(set(aligned.loc[keep, "method"]))


def mixed_config_notes(runs: pd.DataFrame, params_of: dict[str, dict[str, str]]) -> list[str]:
    """One note per method and ``RESULT_PARAMS`` key whose value differs between its runs."""
    notes = []
    for method in method_order(runs):
        run_ids = runs.loc[runs["method"] == method, "run_id"]
        for key in RESULT_PARAMS:
            values = {params_of.get(run_id, {}).get(key) for run_id in run_ids}
            values.discard(None)
            if len(values) > 1:
                shown = ", ".join(sorted(values))
                notes.append(f"{method}: its runs differ in param {key} ({shown})")
    return notes


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}  # fmt: skip


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(char, char) for char in text)
