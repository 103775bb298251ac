"""Where things are in the checkout: the repository and its example Dockerfiles."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
HELLO = EXAMPLES / "hello" / "Dockerfile"
MULTISTAGE = EXAMPLES / "multistage" / "Dockerfile"
