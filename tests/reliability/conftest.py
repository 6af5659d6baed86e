"""The reliability catalogue: what simclrv2 guarantees, one module per promise.

- ``test_kill_and_resume.py``: a run killed at any point (SIGKILL, SIGTERM, SIGINT, during a
  checkpoint write) resumes exactly; damaged and malicious checkpoints are refused in one line.
- ``test_no_data_lost.py``: no command destroys a user's files or leaves outputs half written:
  ``--overwrite`` replaces a run only once the new one has finished, inputs are never outputs,
  ``select``/``embed`` write their files together and under a lock, stale temporaries are removed.
- ``test_one_line_errors.py``: inputs and faults that used to raise a traceback (deep YAML, a full
  disk, non-UTF-8 file names, damaged metrics, absurd ``--workers``, models too large to build)
  give one line naming the thing and the fix, exit code 2.
- ``test_true_messages.py``: what used to be silent or misleading gets a true message or a refusal.
- ``test_portable_suite.py``: the suite itself passes on other CPUs and without the optional extras.

Helpers (running the command line as a user does) are in ``reliability_helpers.py``.
"""

from pathlib import Path

import pytest

from reliability_helpers import TINY, simclrv2


@pytest.fixture(scope="session")
def pretrain_run(tmp_path_factory) -> Path:
    """A finished tiny pretraining run (seconds); copy it before changing it."""
    out = tmp_path_factory.mktemp("reliability") / "pretrained"
    proc = simclrv2("pretrain", *TINY, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out
