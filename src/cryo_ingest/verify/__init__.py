"""Proving an archive whole at rest: `verify`, orphans and `gc`, the coverage page (docs/verify.md)."""

from .coverage import render, write, write_from_manifests
from .gc import GcResult, gc, parse_duration
from .report import Problem, Report, Skipped, sorted_problems
from .walk import verify

__all__ = [
    "GcResult",
    "Problem",
    "Report",
    "Skipped",
    "gc",
    "parse_duration",
    "render",
    "sorted_problems",
    "verify",
    "write",
    "write_from_manifests",
]
