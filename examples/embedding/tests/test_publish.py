"""imageservice's tests, written against kiln's pytest plugin (``pytest -p kiln.testing``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from imageservice import ImageService

from kiln.store import Store
from kiln.testing import TEST_TOKEN, EmulatorClient
from kiln.testing.strategies import fault_schedules

DOCKERFILE = Path(__file__).resolve().parents[1] / "image" / "Dockerfile"


async def test_publish_registers_the_image(
    kiln_emulator: EmulatorClient, kiln_store: Store
) -> None:
    service = ImageService(api_url=kiln_emulator.url, api_key=TEST_TOKEN, store=kiln_store)
    publication = await service.publish(DOCKERFILE)
    assert publication.error is None
    assert [t["id"] for t in kiln_emulator.templates()] == [publication.template_id]
    assert kiln_emulator.live_sandboxes() == []
    assert [build.state for build in await kiln_store.list()] == ["done"]


async def test_a_platform_outage_is_an_answer(kiln_emulator: EmulatorClient) -> None:
    kiln_emulator.add_fault({"status": 500}, method="POST", path="/sandboxes$")
    publication = await ImageService(api_url=kiln_emulator.url, api_key=TEST_TOKEN).publish(
        DOCKERFILE
    )
    assert publication.template_id is None and "HTTP 500" in (publication.error or "")


@settings(
    max_examples=5,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schedule=fault_schedules(max_failures=1))
def test_every_publication_is_an_image_or_an_error(kiln_emulator, schedule):
    kiln_emulator.reset()
    schedule.install(kiln_emulator)
    service = ImageService(api_url=kiln_emulator.url, api_key=TEST_TOKEN)
    publication = asyncio.run(service.publish(DOCKERFILE))
    assert (publication.error is None) == (schedule.expected_outcome() == "done")
    assert kiln_emulator.live_sandboxes() == []
