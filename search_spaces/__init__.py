"""Optuna search spaces for the papers' studies. Knows Optuna, never torch."""

from search_spaces.studies import STUDIES, StudySpec, describe_studies, get_study

__all__ = ["STUDIES", "StudySpec", "describe_studies", "get_study"]
