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




def usable_cpus() -> int:
    """The usable CPUs, at most 16 (beyond that the disk, not the CPU, sets the pace)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 16))
