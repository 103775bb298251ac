"""kiln: build Tensorlake sandbox images through an explicit, persisted state machine.

The public names are imported on first use (PEP 562): ``import kiln.cli`` must not load the whole
library, so that a Ctrl-C while ``kiln`` starts reaches its handler instead of ending in a
traceback from the middle of an import.
"""

import importlib
from typing import TYPE_CHECKING, Any

from kiln._version import __version__

if TYPE_CHECKING:
    from kiln.builds import (
        Build,
        Worker,
        WorkerConfig,
        build_image,
        build_image_sync,
        import_image,
        import_image_sync,
        resume,
        start_build,
        start_import,
        start_plan,
        submit,
    )
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

# Where each public name lives; a test checks that this matches __all__ and the imports above.
_EXPORTS = {
    "ApiError": "kiln.errors",
    "Build": "kiln.builds",
    "BuildError": "kiln.errors",
    "BuildFailed": "kiln.errors",
    "BuildLogEvent": "kiln.machine",
    "BuildState": "kiln.machine",
    "Event": "kiln.machine",
    "KilnError": "kiln.errors",
    "PlanError": "kiln.errors",
    "StatusEvent": "kiln.machine",
    "TransitionEvent": "kiln.machine",
    "UsageError": "kiln.errors",
    "WarningEvent": "kiln.machine",
    "WithDiagnostics": "kiln.errors",
    "Worker": "kiln.builds",
    "WorkerConfig": "kiln.builds",
    "build_image": "kiln.builds",
    "build_image_sync": "kiln.builds",
    "import_image": "kiln.builds",
    "import_image_sync": "kiln.builds",
    "resume": "kiln.builds",
    "start_build": "kiln.builds",
    "start_import": "kiln.builds",
    "start_plan": "kiln.builds",
    "submit": "kiln.builds",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kiln' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
