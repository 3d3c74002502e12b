"""Domain errors become ttrpc codes in one place (shim.task_service.errors), at the
services' edge: each kind its code, a bug stays a bug (UNKNOWN at the server)."""

from __future__ import annotations

import pytest

import ttrpc
from shim.config import ConfigError
from shim.netns.nsenter import NetnsRefused
from shim.paths import InvalidIdentifier
from shim.pod.container import UnknownExec
from shim.pod.process import ProcessStateError
from shim.sandbox.cgroup import CgroupError, CgroupPathError
from shim.spec_support import SpecError
from shim.task_service.errors import at_the_edge, to_ttrpc
from shim.vmm.confinement import ConfinementError

Code = ttrpc.Code


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (InvalidIdentifier("container id 'a/b' is invalid"), Code.INVALID_ARGUMENT, "a/b"),
        (SpecError("bind mount source /x does not exist"), Code.INVALID_ARGUMENT, "/x"),
        (ConfigError("no such file"), Code.INVALID_ARGUMENT, "no such file"),
        (NetnsRefused("the host's own"), Code.INVALID_ARGUMENT, "host's own"),
        (UnknownExec("exec e1 of container c1 not found"), Code.NOT_FOUND, "e1"),
        (CgroupPathError("must not contain '..'"), Code.INVALID_ARGUMENT, ".."),
        (CgroupError("cannot place the VM"), Code.FAILED_PRECONDITION, "cannot place"),
        (ProcessStateError("cannot pause: stopped"), Code.FAILED_PRECONDITION, "pause"),
        (
            ConfinementError("below the floor"),
            Code.FAILED_PRECONDITION,
            "cannot start the sandbox VM: below the floor",
        ),
    ],
)
def test_each_domain_error_has_its_code(error, code, message):
    mapped = to_ttrpc(error)
    assert mapped is not None and mapped.code == code and message in mapped.message


def test_anything_else_is_left_alone():
    assert to_ttrpc(KeyError("x")) is None
    assert to_ttrpc(ValueError("x")) is None


async def test_the_edge_wraps_api_methods_only():
    @at_the_edge
    class Service:
        async def Delete(self, request, context):
            raise UnknownExec("exec e1 of container c1 not found")

        async def Fails(self, request, context):
            raise KeyError("a bug")

        async def _helper(self):
            raise UnknownExec("left as it is")

    service = Service()
    with pytest.raises(ttrpc.TTRPCError) as caught:
        await service.Delete(None, None)
    assert caught.value.code == Code.NOT_FOUND
    with pytest.raises(KeyError):
        await service.Fails(None, None)
    with pytest.raises(UnknownExec):
        await service._helper()
    assert Service.Delete.__name__ == "Delete"
