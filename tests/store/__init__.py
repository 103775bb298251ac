"""Tests of kiln.store."""
