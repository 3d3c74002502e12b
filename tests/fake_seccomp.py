"""A real seccomp filter that allows everything, for the fake QEMU and virtiofsd of the
tests: /proc then shows `Seccomp: 2`, as for the real ones started with -sandbox or
--seccomp, without restricting anything."""

from __future__ import annotations

import ctypes

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
BPF_RET_K = 0x06
SECCOMP_RET_ALLOW = 0x7FFF0000


class _Filter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Filter))]


def load_allow_all_filter() -> None:
    """Install an allow-all seccomp filter on the calling process."""
    libc = ctypes.CDLL(None, use_errno=True)
    allow_all = (_Filter * 1)(_Filter(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(_Prog(1, allow_all)), 0, 0):
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")
