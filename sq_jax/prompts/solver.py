"""The responder's instruction, appended to every question it is asked to solve (SCALEQUEST.md, section 5)."""

from __future__ import annotations

__all__ = ["SOLVER_INSTRUCTION"]

SOLVER_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
