"""Shared pytest setup: hypothesis profiles.

HYPOTHESIS_PROFILE=ci runs 500 examples per property; the default `dev` runs 100.
"""

import os

from hypothesis import settings

settings.register_profile("ci", max_examples=500, deadline=None)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
