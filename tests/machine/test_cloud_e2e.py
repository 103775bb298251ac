"""Issue 10's "Done when": kiln builds against the emulator's cloud profile, end to end.

Timings are scaled down by ten (a 40 s silent builder behind a 5 s stream idle limit becomes
4 s behind 0.5 s), which keeps every harsh behaviour and the suite's time.
"""

from __future__ import annotations

import pytest
from machine_support import EmulatorPool, profile_config, run_to_end

pytestmark = pytest.mark.e2e

SILENT_BUILDER_MS = 4000
STREAM_IDLE_MS = 500


async def test_a_silent_builder_behind_a_short_stream_idle_limit(
    emulator_pool: EmulatorPool,
) -> None:
    config = profile_config("cloud", stream_idle_ms=STREAM_IDLE_MS)
    async with emulator_pool.running(**config) as admin:
        await admin.builder(duration_ms=SILENT_BUILDER_MS)
        run = await run_to_end(admin)
        assert run.state.state == "done", run.state.error
        follows = [r for r in await admin.requests() if r["path"].endswith("/output/follow")]
        assert len(follows) >= 2, "the balancer closed silent streams and kiln followed again"
        assert run.state.attempts["run_builder"] == 1
