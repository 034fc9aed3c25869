"""Shared pytest setup: hypothesis profiles.

HYPOTHESIS_PROFILE=ci runs 500 examples per property, derandomized: the same
examples on every run, so a CI verdict is reproducible (a failure there fails
again locally). The default `dev` runs 100 random ones; `fuzz` (make fuzz) runs
many random ones, to look for new disagreements.
"""

import os

from hypothesis import settings

settings.register_profile("ci", max_examples=500, deadline=None, derandomize=True)
settings.register_profile("fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "5000")),
                          deadline=None)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
