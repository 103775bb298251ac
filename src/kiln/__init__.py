"""kiln: build Tensorlake sandbox images through an explicit, persisted state machine."""

from kiln._version import __version__
from kiln.errors import (
    ApiError,
    BuildError,
    BuildFailed,
    KilnError,
    PlanError,
    UsageError,
    WithDiagnostics,
)

__all__ = [
    "ApiError",
    "BuildError",
    "BuildFailed",
    "KilnError",
    "PlanError",
    "UsageError",
    "WithDiagnostics",
    "__version__",
]
