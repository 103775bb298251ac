"""The test suite's own helpers, one place for each: import them as ``support.<module>``.

kiln's public testing package, :mod:`kiln.testing`, comes first (its ``EmulatorClient`` for the
emulator's admin API, ``TEST_TOKEN``, ``emulator_config``, its fixtures): what is here is only
what kiln's own tests need beyond it.

- ``fixtures``: the fixtures every directory shares (loaded by ``tests/conftest.py``).
- ``paths``: the repository and its example Dockerfiles.
- ``polling``: wait for something with a deadline, on the loop or from a thread.
- ``processes``: run ``kiln`` as a real process (environment, runs, output as it arrives).
- ``emulator``: what the emulator saw (builder starts, commands, completes, snapshot files).
- ``machine``: the machine's driver in a test (a quick machine, background runs, shared
  emulators) and fake Docker credential helpers.
- ``durable``: crash a persisted build, plant a leaked sandbox, rewrite or read a store's rows.
- ``wire``: the emulator's wire protocol spoken raw, for the emulator's own tests.
- ``official``: the official Tensorlake client pointed at an emulator, for conformance.
- ``mock``: a mock server for kiln's API clients, keeping the requests it saw.
- ``stores``: the store tests' fake clock and backend under test.
- ``events``: the published event schema, to check what kiln emits against it.
- ``leak_guard``: the threads a fixture wider than one test may leave running.
"""
