"""Paper tables and figures from tracked MLflow runs. Reads MLflow only; never imports torch."""
