"""kiln: build Tensorlake sandbox images through an explicit, persisted state machine."""

from kiln._build import (
    Build,
    build_image,
    build_image_sync,
    import_image,
    import_image_sync,
    start_build,
    start_import,
    start_plan,
)
from kiln._service import resume, submit
from kiln._version import __version__
from kiln._worker import Worker, WorkerConfig
from kiln.errors import (
    ApiError,
    BuildError,
    BuildFailed,
    KilnError,
    PlanError,
    UsageError,
    WithDiagnostics,
)
from kiln.machine import (
    BuildLogEvent,
    BuildState,
    Event,
    StatusEvent,
    TransitionEvent,
    WarningEvent,
)

__all__ = [
    "ApiError",
    "Build",
    "BuildError",
    "BuildFailed",
    "BuildLogEvent",
    "BuildState",
    "Event",
    "KilnError",
    "PlanError",
    "StatusEvent",
    "TransitionEvent",
    "UsageError",
    "WarningEvent",
    "WithDiagnostics",
    "Worker",
    "WorkerConfig",
    "__version__",
    "build_image",
    "build_image_sync",
    "import_image",
    "import_image_sync",
    "resume",
    "start_build",
    "start_import",
    "start_plan",
    "submit",
]
