import os
import sys

from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))

settings.register_profile("ci", max_examples=40, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=15, deadline=None)
settings.load_profile(os.environ.get("KPOD_HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run the tests marked slow (planted suite, SmolLM2, torchrun, end-to-end runs); CI does")


def _on_cuda(item) -> bool:
    """A case parametrised with a CUDA device (``device`` from loss_helpers.DEVICES, or the string)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return str(params.get("device", "")).startswith("cuda")


def pytest_collection_modifyitems(config, items):
    """``pytest`` alone runs the fast tier; ``--runslow`` (scripts/test.sh, CI) adds the slow tests.
    Every case that runs on a CUDA device carries the ``cuda`` marker (``-m cuda`` on a GPU machine)."""
    import pytest

    for item in items:
        if _on_cuda(item):
            item.add_marker(pytest.mark.cuda)
    if config.getoption("--runslow"):
        return

    skip = pytest.mark.skip(reason="slow: pass --runslow (scripts/test.sh does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
