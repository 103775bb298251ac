"""How many examples each property level runs, scaled from the loaded hypothesis profile.

Under ``ci`` (100 examples by default) the model level runs thousands of examples, the emulator
and crash levels a few hundred between them; ``deep`` runs ten times as many.
"""

from __future__ import annotations

from hypothesis import settings

# Each level's examples as a multiple of the profile's max_examples.
SCALE = {
    "model_paths": 10.0,
    "model_rules": 3.0,
    "emulator": 1.5,
    "emulator_signing": 0.75,
    # The cloud profile: every build waits out a pending sandbox, so fewer examples.
    "emulator_cloud": 0.3,
    "dockerfiles": 0.5,
    "cancel": 0.4,
    "crash": 0.6,
    "crash_cloud": 0.05,
}


def examples(level: str) -> int:
    return max(1, round(settings.default.max_examples * SCALE[level]))
