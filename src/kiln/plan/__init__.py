"""kiln.plan"""

from kiln.plan.context import (
    ContextArchive,
    ContextEntry,
    ContextSummary,
    EntryKind,
    ExtraFile,
    summarize_context,
)
from kiln.plan.dockerignore import PatternMatcher, read_dockerignore

__all__ = [
    "ContextArchive",
    "ContextEntry",
    "ContextSummary",
    "EntryKind",
    "ExtraFile",
    "PatternMatcher",
    "read_dockerignore",
    "summarize_context",
]
