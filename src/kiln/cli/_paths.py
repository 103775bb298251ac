"""Where kiln keeps per-user data."""

from __future__ import annotations

import os
from pathlib import Path


def user_state_dir() -> Path:
    """``$XDG_STATE_HOME/kiln``, else ``~/.local/state/kiln`` (the XDG default)."""
    base = os.environ.get("XDG_STATE_HOME", "").strip()
    root = Path(base) if base else Path.home() / ".local" / "state"
    return root / "kiln"
