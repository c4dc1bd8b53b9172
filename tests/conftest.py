import os

from hypothesis import settings

# CI runs every example set once, fast and reproducibly; locally, HYPOTHESIS_PROFILE=dev digs deeper.
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
