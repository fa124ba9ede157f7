"""Process pools for the data stage (phantom drawing, image decoding)."""

from __future__ import annotations

import multiprocessing
import os


def pool_context():
    """forkserver where available: safe in processes that already run threads (Ray workers,
    data loaders), and with the data modules preloaded in the server, its children start
    without importing them again (no effect if the server is already running)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["medaug.data.phantom", "medaug.data.cache"])
        return context
    return multiprocessing.get_context("spawn")


def start_pool_server() -> None:
    """Start the server processes of :func:`pool_context` now (the forkserver and the
    resource tracker; no effect if they run), so that pools opened later, from any thread,
    fork from the server rather than starting a process from this one."""
    context = pool_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def usable_cpus() -> int:
    """The usable CPUs, at most 16 (beyond that the disk, not the CPU, sets the pace)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 16))
