"""Host memory: glibc's malloc tuned for XLA:CPU's large buffers, for the `vllama-jax` command.

XLA:CPU allocates each step's large buffers (activations, attention logits, gradients) with malloc,
which maps big blocks fresh from the kernel and unmaps them on free, so every step touches new pages
that the kernel must fault in and zero: 80 000 page faults a training step of the demo (a third of
its CPU time on 2 cores), 2 million (5 s of a 12.8 s step) for the bench's 16-frame ViT-B train step.
glibc's tunables (`GLIBC_TUNABLES`) change that:

    glibc.malloc.mmap_max=0              big blocks come from malloc's heap, not from mmap, and
    glibc.malloc.trim_threshold=2**40    freed memory stays there for the next step (not returned)
    glibc.malloc.arena_max=<CPUs>        one heap per CPU rather than 8 (fewer heaps to keep full)
    glibc.malloc.hugetlb=1               2 MiB transparent huge pages where blocks are still mapped

Measured (2-core VM): the demo's train step 223 -> 185 ms, the 16-frame ViT-B train step 12.8 ->
10.3 s, faults per step 80 000 -> 0 and 2 000 000 -> 20 000. The price: the process keeps the
memory of its largest step until it exits. Tunables are read when a process starts, so the command
re-executes itself once with them set; child processes inherit them.

Only on Linux with glibc >= 2.35 and transparent huge pages not turned off; not when GLIBC_TUNABLES
already sets a malloc tunable (the user's choice wins). `VLLAMA_JAX_HUGEPAGES=0` keeps the process as it
is. A notebook or a program importing vllama_jax gets the same by starting Python with `tunables()`'s
value in GLIBC_TUNABLES.
"""
from __future__ import annotations

import os
import platform
import sys

TRIM_THRESHOLD = 1 << 40


def tunables() -> str:
    """The GLIBC_TUNABLES value the command runs with (see the module docstring)."""
    cpus = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return ":".join(["glibc.malloc.mmap_max=0", f"glibc.malloc.trim_threshold={TRIM_THRESHOLD}",
                     f"glibc.malloc.arena_max={cpus}", "glibc.malloc.hugetlb=1"])
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
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return False  # malloc tuned already (by us, or by the user)
    return _glibc_has_hugetlb() and _thp_enabled()


def reexec_with_huge_pages() -> None:
    """Replace this process by the same command with the tunables set; returns only when nothing is done."""
    if not wants_reexec():
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES"), tunables()) if t)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        return  # cannot re-execute (unusual interpreter setup): run as we are
