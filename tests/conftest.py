"""Hypothesis profiles for the whole suite; around every test, a structlog reset and a guard
against threads it leaves running.

``ci`` (loaded unless ``--hypothesis-profile`` names another): derandomized, so a CI run is
reproducible and a red run stays red, with the default number of examples. ``deep``: ten times the
examples, random seeds, for long local runs (``pytest --hypothesis-profile=deep``). The property
suites in tests/properties scale their example counts from the loaded profile.
"""

import signal
import threading
import time
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import settings

from support import leak_guard

pytest_plugins = ["support.fixtures"]

DEFAULT_EXAMPLES = 100
DEEP_EXAMPLES = 10 * DEFAULT_EXAMPLES

settings.register_profile("ci", derandomize=True, max_examples=DEFAULT_EXAMPLES, print_blob=True)
settings.register_profile("deep", max_examples=DEEP_EXAMPLES, print_blob=True)
settings.load_profile("ci")

# A shell starts a background job (`pytest &`, CI under a non-interactive shell) with SIGINT
# ignored, and an ignored signal stays ignored across exec: every kiln process a test starts would
# then shrug off the Ctrl-C the test sends it. Handling it here makes children start with the
# default disposition, as they do under a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _random_order_line(config: pytest.Config) -> str | None:
    """How to replay this run's order (pytest-randomly's own header line is hidden by -q)."""
    seed = getattr(config.option, "randomly_seed", None)
    if not config.pluginmanager.has_plugin("randomly") or not isinstance(seed, int):
        return None
    return f"random test order: replay it with --randomly-seed={seed}"


def pytest_collection_finish(session: pytest.Session) -> None:
    line = _random_order_line(session.config)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if line and reporter is not None:
        reporter.write_line(line)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    line = _random_order_line(config)
    if line:
        terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _structlog_unconfigured() -> Iterator[None]:
    """Each test starts and ends with structlog as a fresh process has it.

    ``structlog.testing.capture_logs`` and in-process ``kiln`` CLI calls configure structlog
    globally; kiln's loggers route differently once it is configured, so a test must not see the
    configuration another one left behind.
    """
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


# Threads a test started may still be ending when it returns (a server's thread joining, a
# producer seeing its consumer gone): poll this long before calling one leaked.
THREAD_END_WAIT_S = 10.0
THREAD_POLL_S = 0.02
# The worker threads of an event loop (its default executor's, and AnyIO's, which Starlette uses):
# a test's loop ends them with itself (its owner, pytest-asyncio, closes it); a shared emulator's
# loop keeps its own on purpose.
LOOP_WORKER_PREFIXES = ("asyncio_", "AnyIO worker thread")


def _left_running(before: set[threading.Thread]) -> list[threading.Thread]:
    return [
        thread
        for thread in threading.enumerate()
        if thread not in before
        and thread.is_alive()
        and not thread.name.startswith(LOOP_WORKER_PREFIXES)
        and not leak_guard.is_shared(thread)
    ]


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running: an emulator it started and did not stop, a
    server, a worker it did not join. Such a thread runs on into the tests after it and makes
    them depend on the order (module and session fixtures' threads are set up before this
    fixture, or registered with ``leak_guard.shared``, and may outlive it)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_END_WAIT_S
    while (leaked := _left_running(before)) and time.monotonic() < deadline:
        time.sleep(THREAD_POLL_S)
    if leaked:
        names = ", ".join(sorted(f"{t.name} (daemon={t.daemon})" for t in leaked))
        pytest.fail(f"the test left threads running: {names}", pytrace=False)
