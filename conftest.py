import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


import pytest  # noqa: E402

KERNEL_BACKENDS = ("reference", "cpu")


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request):
    """Each parity test runs once per kernel backend (src/models/backends)."""
    return request.param
