"""Fresh-process reload checks, served by one loader process for the whole test session.

A test saves a model, then hands ``Loader.run`` a job: Python source that loads the checkpoint
from disk and checks its outputs. The job runs in another Python process that only ever runs such
jobs (it never saved or pruned the models it loads), each job in a fresh namespace, on one torch
thread (the tests' kernels, so outputs compare bit for bit). Starting that process once, rather
than one interpreter per check, saves the ~2 s import of torch, transformers and prunekit per
check.

A failed job fails the test with the loader's traceback; a loader that dies fails the test with
its exit code and the end of its stderr, and the next job starts a new one.

Wire format, one JSON object per line: the test sends ``{"code": str, "values": {name: value}}``
(``values`` are the job's only globals), the loader answers ``{"error": null}`` or
``{"error": traceback}``. Run as ``python -m tests.structure.reload`` to serve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_TAIL = 4000  # characters of the loader's stderr quoted in a failure


class ReloadError(AssertionError):
    """A reload job failed in the loader process, or the process died running it."""


class Loader:
    """The parent's end: starts the loader process when a job needs one, sends jobs, reads the
    answers. Its stderr goes to a log file under ``log_dir`` (a pipe nobody reads could fill)."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._proc: subprocess.Popen | None = None
        self._log = log_dir / "loader-0.log"
        self._starts = 0

    def start(self) -> None:
        """Start a loader process unless a live one is there (it imports while the test works)."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self._starts += 1
        self._log = self._log_dir / f"loader-{self._starts}.log"
        with open(self._log, "wb") as err:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    def run(self, code: str, **values: object) -> None:
        """Run ``code`` in the loader with ``values`` (JSON, paths as strings) as its globals;
        raise ``ReloadError`` with the loader's traceback if it fails."""
        __tracebackhide__ = True  # pytest shows the test's line and the loader's words
        job = json.dumps({"code": code, "values": values}, default=os.fspath)
        self.start()
        proc = self._proc
        seen = self._log.stat().st_size
        try:
            proc.stdin.write(job + "\n")
            proc.stdin.flush()
            answer = proc.stdout.readline()
        except BrokenPipeError:
            answer = ""
        if not answer:  # it died: report why, and let the next job start a new one
            self._proc = None
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            raise ReloadError(
                f"the loader process died on this job (exit code {rc}); its stderr ends:\n"
                + self._stderr()[-_TAIL:]
            )
        error = json.loads(answer)["error"]
        if error is not None:
            said = self._stderr()[seen:][-_TAIL:]
            raise ReloadError(
                "the reload job failed in the loader process:\n"
                + error
                + (f"\nthe loader's stderr during the job:\n{said}" if said else "")
            )

    def _stderr(self) -> str:
        return self._log.read_text(errors="replace")

    def close(self) -> None:
        """End the loader process: closing its stdin is its signal to stop."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def serve() -> None:
    """The loader's end: run each job from stdin in a fresh namespace, answer on stdout."""
    import gc
    import linecache
    import traceback

    import torch

    answers = os.fdopen(os.dup(1), "w")  # jobs' own prints (Python or C) go to stderr instead
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    count = 0
    while line := sys.stdin.readline():
        count += 1
        job = json.loads(line)
        name = f"<reload job {count}>"  # its lines show in a traceback
        linecache.cache[name] = (len(job["code"]), None, job["code"].splitlines(True), name)
        torch.set_num_threads(1)
        namespace = {"__name__": "__reload_job__", **job["values"]}
        try:
            exec(compile(job["code"], name, "exec"), namespace)
            error = None
        except Exception:
            error = traceback.format_exc()
        answers.write(json.dumps({"error": error}) + "\n")
        answers.flush()
        linecache.cache.pop(name, None)
        del namespace
        gc.collect()


if __name__ == "__main__":
    serve()
