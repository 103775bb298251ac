"""Loggers for kiln's library code, silent unless the application says otherwise."""

from __future__ import annotations

import logging
from typing import Any

import structlog

# The library's loggers all live under this one. A handler on it that drops everything keeps
# Python's last-resort handler (warnings to stderr, in an application that configured no
# logging) from printing kiln's warnings; an application's own configuration still sees them,
# since records propagate past it to the root logger.
ROOT_LOGGER = "kiln"
logging.getLogger(ROOT_LOGGER).addHandler(logging.NullHandler())


def logger(name: str) -> Any:
    """structlog as the application configured it (``kiln worker`` does: JSON lines); else stdlib
    logging under ``name``, which prints nothing unless configured.

    Asked for at each use, not once at import, so a configuration made later still applies; and
    never unconfigured structlog, which would print to stdout from inside a library.
    """
    if structlog.is_configured():
        return structlog.get_logger(name)
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[structlog.processors.KeyValueRenderer(key_order=["event"])],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
