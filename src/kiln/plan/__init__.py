"""kiln.plan"""

from kiln.plan.context import (
    ContextArchive,
    ContextEntry,
    ContextSummary,
    EntryKind,
    ExtraFile,
    summarize_context,
)
from kiln.plan.dockerfile import Dockerfile, Heredoc, Instruction, parse_dockerfile
from kiln.plan.dockerignore import PatternMatcher, read_dockerignore
from kiln.plan.naming import default_name_for_dockerfile, default_name_for_image, normalize_posix
from kiln.plan.planner import (
    BuildPlan,
    IgnoredInstruction,
    UnresolvableReference,
    plan_dockerfile,
    plan_import,
)

__all__ = [
    "BuildPlan",
    "ContextArchive",
    "ContextEntry",
    "ContextSummary",
    "Dockerfile",
    "EntryKind",
    "ExtraFile",
    "Heredoc",
    "IgnoredInstruction",
    "Instruction",
    "PatternMatcher",
    "UnresolvableReference",
    "default_name_for_dockerfile",
    "default_name_for_image",
    "normalize_posix",
    "parse_dockerfile",
    "plan_dockerfile",
    "plan_import",
    "read_dockerignore",
    "summarize_context",
]
