"""kiln's pytest plugin (entry point ``kiln``): fixtures for people who embed kiln.

Fixtures are added here as the pieces they wrap land (emulator, stores).
"""
