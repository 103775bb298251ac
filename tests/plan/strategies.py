"""The Dockerfile strategy now lives in kiln.testing.strategies, public for kiln's users."""

from kiln.testing.strategies import dockerfiles

__all__ = ["dockerfiles"]
