import os
import sys

from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))

settings.register_profile("ci", max_examples=40, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=15, deadline=None)
settings.load_profile(os.environ.get("KPOD_HYPOTHESIS_PROFILE", "ci"))
