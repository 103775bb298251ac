"""The official client (``tensorlake._cloud_sdk``, its Rust core) pointed at an emulator, for the
conformance suites: it must complete builds against the emulator, under either profile."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import tensorlake._cloud_sdk as sdk

from kiln.emulator import Emulator
from kiln.testing import TEST_PAT, TEST_TOKEN, EmulatorClient, emulator_config

NAMESPACE = "default"

# The Image Service suites' shared scenario settings (the official client's conformance suite,
# and kiln's run of the same scenarios against it).
CAS_FORMAT = "content_addressed_streaming_v1"
# How long the builder must run for the client to find it running at a poll and follow its log:
# past the first poll (about 45 ms after the seal) on the ideal profile, past the second (3 s
# later) on the cloud one, whose builder sandbox is still booting at the first. Either ends well
# before the poll after (a margin for a loaded machine that costs no time).
FOLLOWABLE_BUILDER_MS = {"ideal": 1500, "cloud": 5000}
# A builder that runs until it is cancelled, saying something every so often.
ENDLESS_BUILDER = {"line_pace_ms": 100, "log_lines": 10_000}
DEADLINE_S = 30.0
ARGS_DOCKERFILE = (
    "ARG BASE=python:3.12-slim\n"
    "FROM ${BASE}\n"
    "ARG GREETING\n"
    "ARG TARGET=world\n"
    'RUN echo "$GREETING ${TARGET}"\n'
)

P = TypeVar("P", bound="OfficialPeer")


@attrs.frozen
class Run:
    """One call of the official client: its result or its error, and every event it emitted."""

    result: dict[str, Any] | None
    error: Exception | None
    events: list[dict[str, Any]]

    def text(self) -> str:
        return "\n".join(e["message"] for e in self.events)

    def logs(self) -> list[str]:
        return [e["message"] for e in self.events if e["type"] == "build_log"]

    def ok(self) -> dict[str, Any]:
        assert self.error is None, f"build failed: {self.error!r}\n{self.text()}"
        assert self.result is not None
        return self.result

    def failure(self) -> str:
        assert self.error is not None, f"expected a failure, got {self.result!r}"
        return str(self.error)


class OfficialPeer(EmulatorClient):
    """The official client on one path (``cas``: the Image Service, else the legacy one),
    pointed at one emulator, plus that emulator's admin API."""

    cas = False

    def __init__(self, url: str, profile: str) -> None:
        super().__init__(url)
        self.profile = profile

    def call(
        self, function: Callable[..., Any], *args: Any, token: str = TEST_TOKEN, **options: Any
    ) -> Run:
        """``function(url, token, *args, **options)``, its JSON answer or its error as a Run."""
        events: list[dict[str, Any]] = []
        options = {"namespace": NAMESPACE, "emit": events.append, **options}
        try:
            result = function(self.url, token, *args, **options)
        except sdk.CloudSandboxClientError as error:
            return Run(None, error, events)
        # The binding hands the registered template back as JSON text.
        return Run(json.loads(result), None, events)

    def build(self, dockerfile: Path, **options: Any) -> Run:
        return self.call(sdk.build_sandbox_image, str(dockerfile), cas=self.cas, **options)

    def import_image(self, reference: str, **options: Any) -> Run:
        return self.call(sdk.import_sandbox_image, reference, cas=self.cas, **options)

    def request_log(self) -> str:
        """The request log as text, to search for what must never be in it."""
        return json.dumps(self.requests())

    def calls(self) -> list[str]:
        return [f"{e['method']} {e['path']}" for e in self.requests()]

    def template(self, name: str) -> dict[str, Any]:
        templates = self.templates()
        found = [t for t in templates if t["name"] == name]
        assert len(found) == 1, f"template {name!r} not in {templates!r}"
        template: dict[str, Any] = found[0]
        return template

    def assert_clean(self) -> None:
        """What must hold after every run: nothing left running, no token in the log."""
        assert self.live_sandboxes() == []
        log = self.request_log()
        assert TEST_TOKEN not in log
        assert TEST_PAT not in log


def start_peer(stack: contextlib.ExitStack, peer_class: type[P], profile: str, **config: Any) -> P:
    """An emulator of ``profile`` with ``config`` and a peer on it, both on ``stack``; when the
    stack unwinds, the peer's :meth:`~OfficialPeer.assert_clean` runs while both are still up."""
    emulator = stack.enter_context(Emulator(emulator_config(profile, **config)))
    peer = peer_class(emulator.url, profile)
    # Unwound last-in first-out: the check runs while client and emulator are still up.
    stack.callback(peer.close)
    stack.callback(peer.assert_clean)
    return peer
