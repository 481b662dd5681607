import pytest

from prunekit.threads import torch_threads

from .reload import Loader


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and the CI machine is shared."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def loader(tmp_path_factory):
    """The session's fresh-process reload checks: ``loader.run(code, **values)`` (reload.py)."""
    loading = Loader(tmp_path_factory.mktemp("loader"))
    loading.start()
    yield loading
    loading.close()
