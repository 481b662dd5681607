import pytest

from prunekit.threads import torch_threads


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and the CI machine is shared."""
    with torch_threads(1):
        yield
