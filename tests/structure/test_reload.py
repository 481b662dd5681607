"""The loader process that runs the fresh-process reload checks (reload.py): each job apart, on
one thread; a failing job or a dying loader fails the test with
the loader's own words, and the next job gets a new loader."""

from __future__ import annotations

import os

import pytest

from .reload import Loader, ReloadError


def test_jobs_run_apart_and_failures_say_why(tmp_path):
    loading = Loader(tmp_path)
    try:
        loading.run(
            "import os, torch\n"
            "assert os.getpid() != parent and torch.get_num_threads() == 1\n"
            "open(pid, 'w').write(str(os.getpid()))\n"
            "left = torch.set_num_threads(2)\n",
            parent=os.getpid(),
            pid=tmp_path / "pid",
        )
        # a fresh namespace, one thread again
        loading.run("import torch\nassert 'left' not in globals()\n")
        loading.run("import torch\nassert torch.get_num_threads() == 1\n")
        with pytest.raises(ReloadError, match=r"(?s)failed.*assert x == 2.*AssertionError: x is 1"):
            loading.run("x = 1\nassert x == 2, f'x is {x}'\n")
        with pytest.raises(ReloadError, match=r"(?s)died on this job \(exit code 3\).*last words"):
            loading.run("import os\nprint('last words', flush=True)\nos._exit(3)")
        loading.run(
            "import os\nassert os.getpid() != int(open(pid).read())\n", pid=tmp_path / "pid"
        )
    finally:
        loading.close()
