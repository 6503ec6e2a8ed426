"""Batch grading: learners' decision files, replayed on fresh labs with papermill, scored against answer keys."""

from .batch import BatchResult, grade

__all__ = ["grade", "BatchResult"]
