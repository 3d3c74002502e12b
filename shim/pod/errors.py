"""The pod layer's errors. They name what went wrong in the pod's own terms; the
services' edge (shim.task_service.errors) gives each its ttrpc/gRPC code."""

from __future__ import annotations


class PodError(Exception):
    """Something the pod cannot do; the message says what and why."""


class NotFound(PodError, LookupError):
    """No such container or process (NOT_FOUND)."""


class AlreadyExists(PodError):
    """The id is taken, or the pod already has its sandbox (ALREADY_EXISTS)."""


class NotReady(PodError):
    """The pod is not in a state to do this (FAILED_PRECONDITION)."""


class StartFailed(PodError):
    """The pod's VM did not start (UNAVAILABLE); the message names the cause."""


class InvalidRequest(PodError):
    """What was asked for cannot be given to the guest (INVALID_ARGUMENT)."""


class HostFailure(PodError):
    """The host could not prepare what the guest needs (INTERNAL)."""


class TooBig(PodError):
    """The pod asks for more than its VM can grow to (RESOURCE_EXHAUSTED)."""
