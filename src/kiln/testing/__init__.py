"""kiln.testing: what a project that embeds kiln needs to test its integration.

- A pytest plugin (:mod:`kiln.testing.plugin`, loaded automatically, or with
  ``pytest -p kiln.testing``) with the fixtures ``kiln_emulator`` and ``kiln_store``.
- :func:`run_build`: run one build to its end against the emulator and get back a
  :class:`BuildRun` (final state, events, log lines, the emulator's request log).
- :func:`emulator_config`: an emulator configuration for tests, ``ideal`` or ``cloud`` (the
  cloud profile with its timings scaled down, :data:`CLOUD_TEST_TIMINGS`).
- :class:`EmulatorClient`: faults, builder behaviour and introspection of a running emulator.
- :class:`FaultSchedule`: faults for a whole build (:class:`RequestFault` on the request kinds
  in :data:`TARGETS`, builder failures, a lost sandbox), installed on an emulator, and the
  outcome a build under it must reach.
- :mod:`kiln.testing.strategies`: hypothesis strategies built from ``states/`` (transition
  sequences, fault schedules) and realistic Dockerfiles; it needs ``hypothesis`` installed.

Importing :mod:`kiln.testing` needs ``pytest`` (the fixtures are part of it).

    async def test_my_service_survives_a_flaky_platform(kiln_emulator):
        kiln_emulator.add_fault({"status": 503}, method="POST", path="/sandboxes$", times=2)
        run = await run_build(kiln_emulator, "Dockerfile")
        assert run.outcome == "done" and kiln_emulator.live_sandboxes() == []
"""

import importlib
from typing import TYPE_CHECKING, Any

# The fixtures are imported now: pytest finds them in this module (``pytest -p kiln.testing``).
# The plugin module is light; the emulator and the stores load when a fixture is used.
from kiln.testing.plugin import (
    kiln_emulator,
    kiln_emulator_config,
    kiln_emulator_server,
    kiln_store,
)

if TYPE_CHECKING:
    from kiln.testing._client import EmulatorClient
    from kiln.testing._faults import TARGETS, FaultSchedule, RequestFault, Target
    from kiln.testing._profiles import CLOUD_TEST_TIMINGS, TEST_PAT, emulator_config
    from kiln.testing._run import TEST_TOKEN, BuildRun, persist_to, run_build, without_backoff

# The rest on first use (PEP 562): pytest imports this package in every run of any project where
# kiln is installed, and most of those never use it.
_EXPORTS = {
    "CLOUD_TEST_TIMINGS": "kiln.testing._profiles",
    "TARGETS": "kiln.testing._faults",
    "TEST_PAT": "kiln.testing._profiles",
    "TEST_TOKEN": "kiln.testing._run",
    "BuildRun": "kiln.testing._run",
    "EmulatorClient": "kiln.testing._client",
    "FaultSchedule": "kiln.testing._faults",
    "RequestFault": "kiln.testing._faults",
    "Target": "kiln.testing._faults",
    "emulator_config": "kiln.testing._profiles",
    "persist_to": "kiln.testing._run",
    "run_build": "kiln.testing._run",
    "without_backoff": "kiln.testing._run",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kiln.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CLOUD_TEST_TIMINGS",
    "TARGETS",
    "TEST_PAT",
    "TEST_TOKEN",
    "BuildRun",
    "EmulatorClient",
    "FaultSchedule",
    "RequestFault",
    "Target",
    "emulator_config",
    "kiln_emulator",
    "kiln_emulator_config",
    "kiln_emulator_server",
    "kiln_store",
    "persist_to",
    "run_build",
    "without_backoff",
]
