"""Enter a netns from one thread, and run netlink work there in a thread of its own.

Why not pyroute2's `NetNS(path)`: it forks a child for the socket and for every tap
it creates, and stops it with SIGTERM. In the shim daemon that child inherits
asyncio's signal wakeup fd, so its SIGTERM reaches the daemon's loop as if the
daemon had been told to shut down. setns(2) on one thread needs no child: the
socket, and the tap TUNSETIFF makes, belong to that thread's netns.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: the CLONE_NEW* type of the namespace
HOST_NETNS = ("/proc/self/ns/net", "/proc/1/ns/net")


class NetnsGone(Exception):
    """The netns path does not exist (any more)."""


class NetnsRefused(ValueError):
    """The spec's netns path is not a network namespace a pod may be given."""


def check_pod_netns(path: str) -> None:
    """Refuse a pod netns path that is not a network namespace, or that is the host's own
    (the shim's or PID 1's): its interfaces would be redirected into the VM."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsGone(f"network namespace {path} does not exist") from None
    except OSError as exc:
        raise NetnsRefused(f"network namespace {path} cannot be opened: {exc}") from None
    try:
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError:
            kind = None
        if kind != CLONE_NEWNET:
            raise NetnsRefused(f"{path} is not a network namespace")
        st = os.fstat(fd)
    finally:
        os.close(fd)
    for host in HOST_NETNS:
        with contextlib.suppress(OSError):  # PID 1's may be out of reach: the shim's is not
            theirs = os.stat(host)
            if (st.st_dev, st.st_ino) == (theirs.st_dev, theirs.st_ino):
                raise NetnsRefused(
                    f"network namespace {path} is the host's own ({host}): a pod needs one of "
                    "its own"
                )


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Move the calling thread (only it) into the netns at `path`; move it back after."""
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsGone(f"network namespace {path} does not exist") from None
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


@contextlib.contextmanager
def open_netns(path: str) -> Iterator[Any]:
    """A pyroute2 IPRoute inside the netns at `path` (never creates one)."""
    with in_netns(path):
        from pyroute2 import IPRoute

        ipr = IPRoute()
        try:
            yield ipr
        finally:
            ipr.close()


async def in_own_thread(func: Callable[..., T], *args: Any) -> T:
    """Run `func` in a new thread that ends with it: a thread that entered a netns never
    serves anything else (unlike the default executor's threads)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def body() -> None:
        try:
            result = func(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=body, name="pykata-netns", daemon=True).start()
    return await future
