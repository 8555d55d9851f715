"""Optuna search spaces for the papers' studies. Knows Optuna, never torch."""
