"""Host memory: glibc's malloc on transparent huge pages, for the `vllama-jax` command.

XLA:CPU allocates each step's large buffers (activations, attention logits, gradients: hundreds of MB
a training step of the demo) with malloc, which maps big blocks fresh from the kernel and returns them
on free, so every step touches new 4 KiB pages: 80 000 page faults and ~150 ms of kernel time per demo
training step on 2 cores, a third of its CPU time. With glibc's `glibc.malloc.hugetlb=1` tunable,
malloc asks for transparent huge pages (2 MiB) on those blocks: 1 700 faults, and the step takes 10-20 %
less time (the demo's default run: 10.7 -> 9.5 min). Keeping freed blocks instead (mmap_max=0 and a huge
trim_threshold) removed the faults altogether and took the bench's 16-frame ViT-B train step from 12.8
to 10.3 s, but with one malloc arena it slowed the demo's step by a third and with one per CPU it slowed
the server (malloc contention between its threads): not used. The tunable is read when a process starts, so the command re-executes itself once with it
set (`GLIBC_TUNABLES`); child processes inherit it.

Only on Linux with glibc >= 2.35 (older ones ignore the tunable) and transparent huge pages not turned
off. `VLLAMA_JAX_HUGEPAGES=0` keeps the process as it is. A notebook or a program importing vllama_jax
can get the same by starting Python with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in its environment.
"""
from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_has_hugetlb() -> bool:
    lib, version = platform.libc_ver()
    if lib != "glibc":
        return False
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 35)


def _thp_enabled() -> bool:
    try:
        with open(THP_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def wants_reexec(environ=os.environ) -> bool:
    """Whether this process should re-execute itself with the huge-page tunable set."""
    if sys.platform != "linux" or environ.get("VLLAMA_JAX_HUGEPAGES", "1") == "0":
        return False
    if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
        return False  # set already (by us, or by the user, whatever the value)
    return _glibc_has_hugetlb() and _thp_enabled()


def reexec_with_huge_pages() -> None:
    """Replace this process by the same command with the tunable set; returns only when nothing is done."""
    if not wants_reexec():
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES"), TUNABLE) if t)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        return  # cannot re-execute (unusual interpreter setup): run as we are
