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
        Template,
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
        AmbiguousBuildId,
        ApiError,
        AuthenticationError,
        AuthorizationError,
        BuildCancelled,
        BuildError,
        BuildFailed,
        BuildHandedOver,
        BuildNotFound,
        ChunkedUploadRefused,
        ConfigError,
        ContextError,
        DockerfileError,
        KilnError,
        LeaseLost,
        OwnedElsewhere,
        PhaseTimeout,
        PlanError,
        ResponseError,
        ServerError,
        StaleWriteError,
        StoreOutage,
        StoreUnavailable,
        TransportError,
        UnreadableBuild,
        UsageError,
        WithDiagnostics,
    )
    from kiln.machine import (
        BuildLogEvent,
        BuildState,
        CachedEvent,
        Event,
        StatusEvent,
        TransitionEvent,
        WarningEvent,
    )

# Where each public name lives; a test checks that this matches __all__ and the imports above.
_EXPORTS = {
    "AmbiguousBuildId": "kiln.errors",
    "ApiError": "kiln.errors",
    "AuthenticationError": "kiln.errors",
    "AuthorizationError": "kiln.errors",
    "Build": "kiln.builds",
    "BuildCancelled": "kiln.errors",
    "BuildError": "kiln.errors",
    "BuildFailed": "kiln.errors",
    "BuildHandedOver": "kiln.errors",
    "BuildLogEvent": "kiln.machine",
    "BuildNotFound": "kiln.errors",
    "BuildState": "kiln.machine",
    "CachedEvent": "kiln.machine",
    "ChunkedUploadRefused": "kiln.errors",
    "ConfigError": "kiln.errors",
    "ContextError": "kiln.errors",
    "DockerfileError": "kiln.errors",
    "Event": "kiln.machine",
    "KilnError": "kiln.errors",
    "LeaseLost": "kiln.errors",
    "OwnedElsewhere": "kiln.errors",
    "PhaseTimeout": "kiln.errors",
    "PlanError": "kiln.errors",
    "ResponseError": "kiln.errors",
    "ServerError": "kiln.errors",
    "StaleWriteError": "kiln.errors",
    "StatusEvent": "kiln.machine",
    "StoreOutage": "kiln.errors",
    "StoreUnavailable": "kiln.errors",
    "Template": "kiln.builds",
    "TransitionEvent": "kiln.machine",
    "TransportError": "kiln.errors",
    "UnreadableBuild": "kiln.errors",
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
    "AmbiguousBuildId",
    "ApiError",
    "AuthenticationError",
    "AuthorizationError",
    "Build",
    "BuildCancelled",
    "BuildError",
    "BuildFailed",
    "BuildHandedOver",
    "BuildLogEvent",
    "BuildNotFound",
    "BuildState",
    "CachedEvent",
    "ChunkedUploadRefused",
    "ConfigError",
    "ContextError",
    "DockerfileError",
    "Event",
    "KilnError",
    "LeaseLost",
    "OwnedElsewhere",
    "PhaseTimeout",
    "PlanError",
    "ResponseError",
    "ServerError",
    "StaleWriteError",
    "StatusEvent",
    "StoreOutage",
    "StoreUnavailable",
    "Template",
    "TransitionEvent",
    "TransportError",
    "UnreadableBuild",
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
