"""The test suite's own helpers, one place for each: import them as ``support.<module>``.

kiln's public testing package, :mod:`kiln.testing`, comes first (its ``EmulatorClient``, its
fixtures, ``TEST_TOKEN``): what is here is only what kiln's own tests need beyond it. The
fixtures every directory shares are in :mod:`support.fixtures`, loaded by ``tests/conftest.py``.
"""
