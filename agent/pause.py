"""The pod's pause process: PID 1 of the pid namespace the agent made for the pod.

`python3 -S -I pause.py ROOT`, started by agent.pidns as the first process of a new
pid namespace. It holds that namespace and does nothing else:

- every signal it may ignore is ignored: as the namespace's init it then receives
  none from the pod (not even SIGKILL), and with SIGCHLD ignored the kernel reaps the
  orphans that the pod's processes leave to it;
- it is chrooted into ROOT (an empty directory) and runs as nobody, without
  capabilities and not dumpable: a container that shares the namespace cannot ptrace
  it to reach the guest's files;
- it dies with the agent (parent-death signal).

It writes "ready" on stdout once all of that is done, a traceback on stderr when it
cannot. Standard library only: it runs isolated (-I), outside the agent's packages.
"""

import contextlib
import ctypes
import os
import signal
import sys

NOBODY = 65534
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4


def ignore_signals() -> None:
    """SIG_IGN for every signal that can have it (not SIGKILL, SIGSTOP, glibc's own)."""
    for signum in signal.valid_signals():
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signum, signal.SIG_IGN)


def confine(root: str) -> None:
    """Chroot into root, become nobody without capabilities, not dumpable, mortal."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the chroot hides the libraries

    def prctl(option: int, value: int) -> None:
        if libc.prctl(option, value, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")

    os.chroot(root)
    os.chdir("/")
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)  # from uid 0 to another: every capability goes
    prctl(PR_SET_DUMPABLE, 0)
    # after setuid, which clears it; the agent's end of stdout tells whether it was in time
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def main(argv: list[str]) -> None:
    ignore_signals()
    null = os.open(os.devnull, os.O_RDWR)
    confine(argv[1])
    os.write(1, b"ready\n")  # EPIPE (the agent is gone): the traceback goes nowhere, it exits
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    while True:
        signal.pause()


if __name__ == "__main__":
    main(sys.argv)
