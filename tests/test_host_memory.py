"""The `vllama-jax` command re-executes itself once with glibc's malloc on transparent huge pages
(vllama_jax/host_memory.py), keeps its arguments, and can be told not to."""
import os
import subprocess
import sys

import pytest

from vllama_jax import host_memory

PROBE = ("import os, sys; print('TUNABLES=' + str(os.environ.get('GLIBC_TUNABLES')), flush=True); "
         "sys.argv = ['vllama-jax', 'cache', '--help']; from vllama_jax.cli import main; sys.exit(main())")


def _run(**env):
    full = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "VLLAMA_JAX_HUGEPAGES")}
    full.update(env)
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=full, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line.startswith("TUNABLES=")], proc.stdout


@pytest.mark.skipif(not host_memory.wants_reexec({}), reason="not Linux with glibc >= 2.35 and THP")
def test_the_command_restarts_once_with_the_tunable_and_its_arguments():
    lines, out = _run()
    assert lines == ["TUNABLES=None", "TUNABLES=glibc.malloc.hugetlb=1"]
    assert "usage: vllama-jax cache" in out  # the same command ran, once
    # Other tunables of the user's are kept.
    lines, _ = _run(GLIBC_TUNABLES="glibc.malloc.tcache_count=7")
    assert lines == ["TUNABLES=glibc.malloc.tcache_count=7",
                     "TUNABLES=glibc.malloc.tcache_count=7:glibc.malloc.hugetlb=1"]


def test_no_restart_when_told_not_to_or_already_set():
    assert _run(VLLAMA_JAX_HUGEPAGES="0")[0] == ["TUNABLES=None"]
    assert _run(GLIBC_TUNABLES="glibc.malloc.hugetlb=0")[0] == ["TUNABLES=glibc.malloc.hugetlb=0"]
    assert not host_memory.wants_reexec({"VLLAMA_JAX_HUGEPAGES": "0"})
