"""Hypothesis profiles for the whole suite, and a structlog reset around every test.

``ci`` (loaded unless ``--hypothesis-profile`` names another): derandomized, so a CI run is
reproducible and a red run stays red, with the default number of examples. ``deep``: ten times the
examples, random seeds, for long local runs (``pytest --hypothesis-profile=deep``). The property
suites in tests/properties scale their example counts from the loaded profile.
"""

from collections.abc import Iterator

import pytest
import structlog
from hypothesis import settings

DEFAULT_EXAMPLES = 100
DEEP_EXAMPLES = 10 * DEFAULT_EXAMPLES

settings.register_profile("ci", derandomize=True, max_examples=DEFAULT_EXAMPLES, print_blob=True)
settings.register_profile("deep", max_examples=DEEP_EXAMPLES, print_blob=True)
settings.load_profile("ci")


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
