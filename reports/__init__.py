"""Paper tables and figures from tracked MLflow runs. Reads MLflow only; never imports torch.

- ``reports.results``: ``load_study_results(study, tracking_uri) -> StudyResults`` (frames of
  finished runs, excluded runs and per-predicate recalls);
- ``reports.methods``: method labels (``Align-Motifs (p = 0.1)``), row order, ``--compare``
  names;
- ``reports.tables``: ablation tables as Markdown, LaTeX (booktabs) and CSV;
- ``reports.plots``: per-predicate R@K difference and bars, sensitivity curves (matplotlib);
- ``reports.report``: ``write_report(...)``, the entry of ``sgstudy report``.
"""
