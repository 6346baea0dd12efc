"""A short scheduler slice for the media clock's thread under the normal (fair) scheduler.

Under `SCHED_OTHER` the thread that sends every call's frames wakes 400 times a second and
runs for well under a millisecond; when it wakes, the cores are often busy with the event
loop's thread, the other workers and whatever else runs on the machine, and it waits for one
of them to be preempted. Linux's EEVDF scheduler lets a fair task ask for a
shorter slice (`sched_attr.sched_runtime`, 0.1-100 ms, from Linux 6.12; the default is about
0.7-3 ms): its virtual deadline comes sooner, and a waking task with a shorter slice preempts
the running one. No privilege is needed (unlike a realtime policy or a lower nice value), and
older kernels accept and ignore it.

Linux only (`sched_setattr(2)` has no libc wrapper: a raw syscall through ctypes).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from typing import Final

logger = logging.getLogger(__name__)

# The shortest slice the kernel accepts (it clamps to 0.1-100 ms).
MEDIA_THREAD_SLICE_NS: Final = 100_000

# sched_setattr / sched_getattr syscall numbers by machine (asm-generic for the 64-bit ARMs).
_SYSCALLS: Final = {"x86_64": (314, 315), "aarch64": (274, 275), "arm64": (274, 275)}


class SchedAttr(ctypes.Structure):
    """`struct sched_attr` (include/uapi/linux/sched/types.h, SCHED_ATTR_SIZE_VER1)."""

    _fields_ = [
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
        ("util_min", ctypes.c_uint32),
        ("util_max", ctypes.c_uint32),
    ]


def _syscalls() -> tuple[ctypes.CDLL, int, int] | None:
    # platform.machine() names the kernel's architecture: a 32-bit process on a 64-bit
    # kernel has other syscall numbers.
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return None
    return ctypes.CDLL(None, use_errno=True), numbers[0], numbers[1]


def thread_sched_attr() -> SchedAttr | None:
    """The calling thread's scheduling attributes, or None where they cannot be read."""
    try:
        calls = _syscalls()
    except OSError:
        return None
    if calls is None:
        return None
    libc, _, getattr_nr = calls
    attr = SchedAttr()
    if libc.syscall(getattr_nr, 0, ctypes.byref(attr), ctypes.sizeof(attr), 0) != 0:
        return None
    return attr


def request_short_slice(slice_ns: int = MEDIA_THREAD_SLICE_NS) -> bool:
    """Ask for a `slice_ns` scheduler slice for the calling thread, if it runs under the normal
    scheduler (a realtime thread has its own rules: left alone). Keeps its nice value. True
    when the kernel took the request; never raises (the media thread calls it)."""
    try:
        return _request_short_slice(slice_ns)
    except (OSError, AttributeError) as error:  # no libc to load, no syscall() in it
        logger.debug("media clock thread keeps its slice: %s", error)
        return False


def _request_short_slice(slice_ns: int) -> bool:
    current = thread_sched_attr()
    if current is None or current.sched_policy != os.SCHED_OTHER:
        return False
    calls = _syscalls()
    assert calls is not None
    libc, setattr_nr, _ = calls
    wanted = SchedAttr(
        size=ctypes.sizeof(SchedAttr),
        sched_policy=os.SCHED_OTHER,
        sched_nice=current.sched_nice,
        sched_runtime=slice_ns,
    )
    if libc.syscall(setattr_nr, 0, ctypes.byref(wanted), 0) != 0:
        logger.debug("media clock thread keeps its slice: %s", os.strerror(ctypes.get_errno()))
        return False
    return True
