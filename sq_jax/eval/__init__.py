"""Evaluation: benchmark loaders, answer extraction, answer equivalence and parallel grading."""
