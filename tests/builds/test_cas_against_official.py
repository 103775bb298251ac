"""kiln on the CAS path against the official client, scenario by scenario (issue 16's "done
when"): a Dockerfile build, one with build args, an import, a build on a pinned parent, and a
background build started, followed and cancelled, on both emulator profiles. Each test runs the
official client (0.5.163, ``cas=True``) on one emulator and kiln (``cas=True``) on another of the
same profile and builder, and asserts that kiln completes the same way and that the emulator's
request log holds no more requests for kiln than for the official client.

Both poll a build some 45-50 ms after the seal, then every 3 s, and follow the builder's log
while a poll finds it running; the builder is made to outlast the first poll that can find it
running so that both follow it (the scenarios where the log matters), the same for both.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tensorlake._cloud_sdk as sdk

import kiln
from kiln.errors import BuildCancelled, BuildHandedOver
from kiln.store import MemoryStore
from kiln.testing import TEST_PAT, TEST_TOKEN
from support.official import (
    ARGS_DOCKERFILE,
    CAS_FORMAT,
    DEADLINE_S,
    ENDLESS_BUILDER,
    FOLLOWABLE_BUILDER_MS,
    NAMESPACE,
    OfficialPeer,
    Run,
    start_peer,
)
from support.paths import HELLO
from support.polling import wait_until, wait_until_blocking


class Peer(OfficialPeer):
    """One emulator, with the official client on the CAS path pointed at it."""

    cas = True

    def count(self, since: int = 0) -> int:
        return len(self.requests()) - since


class Pair:
    """Two emulators of one profile: ``official`` for the official client, ``kiln`` for kiln."""

    def __init__(self, official: Peer, kiln_side: Peer) -> None:
        self.official = official
        self.kiln = kiln_side
        self.profile = official.profile

    def set_builder(self, **behaviour: Any) -> None:
        self.official.set_builder(**behaviour)
        self.kiln.set_builder(**behaviour)

    def slow_builder(self) -> None:
        self.set_builder(duration_ms=FOLLOWABLE_BUILDER_MS[self.profile])

    def compare(self, official: int, ours: int, scenario: str) -> None:
        print(f"{scenario} [{self.profile}]: kiln {ours} requests, official client {official}")
        assert ours <= official, (
            f"{scenario} on {self.profile}: kiln made {ours} requests, the official client "
            f"{official}\nkiln: {self.kiln.calls()}\nofficial: {self.official.calls()}"
        )


@pytest.fixture(params=["ideal", pytest.param("cloud", marks=pytest.mark.slow)])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    with contextlib.ExitStack() as stack:
        yield Pair(
            start_peer(stack, Peer, request.param, pat=TEST_PAT),
            start_peer(stack, Peer, request.param, pat=TEST_PAT),
        )


def dockerfile_in(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name / "Dockerfile"
    path.parent.mkdir()
    path.write_text(text)
    return path


def kiln_options(peer: Peer, events: list[kiln.Event] | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {"cas": True, "api_url": peer.url, "api_key": TEST_TOKEN}
    if events is not None:
        options["on_event"] = events.append
    return options


def kiln_logs(events: list[kiln.Event]) -> list[str]:
    return [e.message for e in events if isinstance(e, kiln.BuildLogEvent)]


async def test_a_dockerfile_build(pair: Pair) -> None:
    official = pair.official.build(HELLO).ok()
    template = await kiln.build_image(HELLO, **kiln_options(pair.kiln))
    assert (template.name, official["name"]) == ("hello", "hello")
    assert (
        template.response["snapshotFormatVersion"]
        == official["snapshotFormatVersion"]
        == CAS_FORMAT
    )
    [build] = pair.kiln.image_builds()
    assert (build["status"], build["sealed"]) == ("succeeded", True)
    pair.compare(pair.official.count(), pair.kiln.count(), "Dockerfile build")


async def test_a_build_with_build_args(pair: Pair, tmp_path: Path) -> None:
    dockerfile = dockerfile_in(tmp_path, "greet", ARGS_DOCKERFILE)
    args = {"GREETING": "hello", "UNUSED": "x"}
    pair.slow_builder()
    run = pair.official.build(dockerfile, build_args=args)
    run.ok()
    events: list[kiln.Event] = []
    await kiln.build_image(dockerfile, build_args=args, **kiln_options(pair.kiln, events))
    # Both followed the builder's log, which shows the arguments applied; each line once.
    step = 'Step 5/5 : RUN echo "hello world"'
    assert step in run.logs()
    assert step in kiln_logs(events)
    assert len(kiln_logs(events)) == len(set(kiln_logs(events)))
    [build] = pair.kiln.image_builds()
    assert build["build_args"] == args
    pair.compare(pair.official.count(), pair.kiln.count(), "build args")


async def test_an_import(pair: Pair) -> None:
    official = pair.official.import_image("python:3.12-slim").ok()
    template = await kiln.import_image("python:3.12-slim", **kiln_options(pair.kiln))
    assert (template.name, official["name"]) == ("python", "python")
    [build] = pair.kiln.image_builds()
    assert (build["kind"], build["status"]) == ("import", "succeeded")
    pair.compare(pair.official.count(), pair.kiln.count(), "import")


async def test_a_build_on_a_pinned_parent(pair: Pair, tmp_path: Path) -> None:
    # The parent first, each side its own; then only the pinned build's requests are counted.
    official_parent = pair.official.build(HELLO).ok()["id"]
    kiln_parent = (await kiln.build_image(HELLO, **kiln_options(pair.kiln))).id
    official_before, kiln_before = pair.official.count(), pair.kiln.count()
    (tmp_path / "official").mkdir()
    (tmp_path / "kiln").mkdir()
    official_child = dockerfile_in(tmp_path / "official", "pinned", f"FROM {official_parent}\n")
    kiln_child = dockerfile_in(tmp_path / "kiln", "pinned", f"FROM {kiln_parent}\n")
    pair.official.build(official_child).ok()
    await kiln.build_image(kiln_child, **kiln_options(pair.kiln))
    assert pair.official.template("pinned")["rootfsNodeKind"] == "diff"
    assert pair.kiln.template("pinned")["rootfsNodeKind"] == "diff"
    pinned = {b["name"]: b["parents"] for b in pair.kiln.image_builds()}["pinned"]
    assert pinned == [{"reference": kiln_parent, "public_id": kiln_parent}]
    pair.compare(
        pair.official.count(official_before), pair.kiln.count(kiln_before), "pinned parent"
    )


def official_background(peer: Peer) -> tuple[Run, dict[str, Any]]:
    """start_image_build, then wait_image_build following the log until a line comes, then
    cancel_image_build: the waiting call's failure and the cancel's answer."""
    started = json.loads(
        sdk.start_image_build(peer.url, TEST_TOKEN, str(HELLO), namespace=NAMESPACE)
    )
    build_id = started["build"]["build_id"]
    events: list[dict[str, Any]] = []
    waited: list[Run] = []

    def wait() -> None:
        waited.append(
            peer.call(sdk.wait_image_build, build_id, DEADLINE_S, True, emit=events.append)
        )

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        wait_until_blocking(lambda: any(e["type"] == "build_log" for e in events))
        outcome = json.loads(
            sdk.cancel_image_build(peer.url, TEST_TOKEN, build_id, namespace=NAMESPACE)
        )
    finally:
        waiter.join(DEADLINE_S)
    [run] = waited
    return run, outcome


async def test_a_background_build_started_followed_and_cancelled(pair: Pair) -> None:
    pair.set_builder(**ENDLESS_BUILDER)
    run, outcome = official_background(pair.official)
    assert outcome["outcome"] == "cancelled"
    assert '"code":"cancelled"' in run.failure()

    # kiln: start the build and return once the service has it (kiln build --cas --detach),
    # follow it (kiln resume), cancel it (kiln cancel): the same store throughout.
    store = MemoryStore()
    started = kiln.start_build(HELLO, store=store, **kiln_options(pair.kiln))
    await wait_until(lambda: started.admitted, timeout_s=DEADLINE_S)
    await started.detach()
    with pytest.raises(BuildHandedOver):
        await started.result()
    events: list[kiln.Event] = []
    resumed = await kiln.resume(
        started.state.id, store=store, api_key=TEST_TOKEN, on_event=events.append
    )
    await wait_until(lambda: kiln_logs(events), timeout_s=DEADLINE_S)
    resumed.cancel()
    with pytest.raises(BuildCancelled) as cancelled:
        await resumed.result()
    assert "its build on the Image Service was cancelled" in (cancelled.value.hint or "")
    [build] = pair.kiln.image_builds()
    assert build["status"] == "cancelled"
    pair.compare(pair.official.count(), pair.kiln.count(), "background build")
