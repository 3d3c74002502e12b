"""The one place where the pod's domain errors become ttrpc/gRPC status codes.

The Task and Sandbox services are decorated with `at_the_edge`: their API methods
(the ttrpc methods, named in CamelCase) let domain errors propagate, and the wrapper
answers with what `to_ttrpc` says. An error not listed here stays what it is: the
ttrpc server answers UNKNOWN and logs its traceback (a bug to fix).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from shim.config import ConfigError
from shim.netns.nsenter import NetnsRefused
from shim.paths import InvalidIdentifier
from shim.pod.errors import (
    AlreadyExists,
    HostFailure,
    InvalidRequest,
    NotFound,
    NotReady,
    StartFailed,
    TooBig,
)
from shim.pod.process import ProcessStateError
from shim.sandbox.cgroup import CgroupError, CgroupPathError
from shim.spec_support import SpecError
from shim.vmm.confinement import ConfinementError
from ttrpc import Code, TTRPCError

# most specific first: ConfinementError is a VMStartError, CgroupPathError a CgroupError
_CODES: tuple[tuple[type[Exception], Code, str], ...] = (
    (ConfinementError, Code.FAILED_PRECONDITION, "cannot start the sandbox VM: "),
    (CgroupPathError, Code.INVALID_ARGUMENT, ""),
    (CgroupError, Code.FAILED_PRECONDITION, ""),
    (ProcessStateError, Code.FAILED_PRECONDITION, ""),
    (NotFound, Code.NOT_FOUND, ""),
    (AlreadyExists, Code.ALREADY_EXISTS, ""),
    (NotReady, Code.FAILED_PRECONDITION, ""),
    (StartFailed, Code.UNAVAILABLE, ""),
    (InvalidRequest, Code.INVALID_ARGUMENT, ""),
    (HostFailure, Code.INTERNAL, ""),
    (TooBig, Code.RESOURCE_EXHAUSTED, ""),
    (InvalidIdentifier, Code.INVALID_ARGUMENT, ""),
    (NetnsRefused, Code.INVALID_ARGUMENT, ""),
    (SpecError, Code.INVALID_ARGUMENT, ""),
    (ConfigError, Code.INVALID_ARGUMENT, ""),
)


def to_ttrpc(exc: Exception) -> TTRPCError | None:
    """The status a handler's exception is answered with (None: not a domain error)."""
    for kind, code, prefix in _CODES:
        if isinstance(exc, kind):
            return TTRPCError(code, f"{prefix}{exc}")
    return None


C = TypeVar("C", bound=type)


def at_the_edge(cls: C) -> C:
    """Wrap every API method of a service class (async, CamelCase) so that a domain
    error it raises becomes its ttrpc status."""
    for name, method in list(vars(cls).items()):
        if name[:1].isupper() and inspect.iscoroutinefunction(method):
            setattr(cls, name, _translating(method))
    return cls


def _translating(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except TTRPCError:
            raise
        except Exception as exc:
            mapped = to_ttrpc(exc)
            if mapped is None:
                raise
            raise mapped from None

    return call
