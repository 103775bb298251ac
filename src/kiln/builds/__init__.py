"""Builds as the library runs them: start one here, submit one for a worker, resume one, or run
the worker that takes them from a shared store.

``start_build`` / ``start_import`` / ``start_plan`` return a :class:`Build` handle on a build
running in this loop; ``build_image`` and friends are conveniences over them. ``submit`` queues a
build in a store, ``resume`` continues a persisted one, and :class:`Worker` runs a store's builds.
"""

from kiln.builds._build import (
    Build,
    BuildKwargs,
    build_image,
    build_image_sync,
    import_image,
    import_image_sync,
    start_build,
    start_import,
    start_plan,
    start_state,
)
from kiln.builds._cache import build_key, context_digest
from kiln.builds._options import SubmitKwargs, build_options, option_keywords
from kiln.builds._service import (
    ResumeKwargs,
    finished,
    resume,
    resume_owned,
    submit,
)
from kiln.builds._template import Template
from kiln.builds._worker import Worker, WorkerConfig

__all__ = [
    "Build",
    "BuildKwargs",
    "ResumeKwargs",
    "SubmitKwargs",
    "Template",
    "Worker",
    "WorkerConfig",
    "build_image",
    "build_image_sync",
    "build_key",
    "build_options",
    "context_digest",
    "finished",
    "import_image",
    "import_image_sync",
    "option_keywords",
    "resume",
    "resume_owned",
    "start_build",
    "start_import",
    "start_plan",
    "start_state",
    "submit",
]
