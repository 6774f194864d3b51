"""Multi-host for real, on one machine: 2 processes x 2 CPU devices joined by a 127.0.0.1 coordinator.

They must train exactly as one process does (each reads only its rows of every global batch, the
global batch is assembled with jax.make_array_from_process_local_data, only process 0 writes
metrics), and the Orbax checkpoint they write together must restore in a single process, which then
continues with their losses.
"""
import os
import socket
import subprocess

import numpy as np
import pytest

from test_train import (REPO, RESUME_AT, STEPS, base, losses, read_metrics, resume_copy, run_train,  # noqa: F401
                        smoke_overrides, straight_run, train_command, train_env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_as_one_and_their_checkpoint_restores_in_one(base):
    out = os.path.join(base, "two_processes")
    port = _free_port()
    procs = [subprocess.Popen(train_command(smoke_overrides(base, out), extra=[
        "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]),
        cwd=REPO, env=train_env(base, devices=2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-4000:]
    with open(os.path.join(out, "metrics.jsonl")) as f:
        assert len(f.readlines()) == STEPS  # one writer: process 0
    two = read_metrics(out)
    _, one = straight_run(base)
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-4, atol=1e-4)
    assert [two[s]["bad_samples"] for s in two] == [one[s]["bad_samples"] for s in one]

    # Their checkpoint (arrays split over 4 devices of 2 processes) in one process on one device: the
    # data position comes from the step (grain's state is per process), and the losses continue.
    restored = run_train(base, resume_copy(out, os.path.join(base, "restored_in_one"), RESUME_AT))
    later = list(range(RESUME_AT + 1, STEPS + 1))
    assert sorted(restored) == later
    np.testing.assert_allclose(losses(restored), losses(two, later), rtol=1e-4, atol=1e-4)
