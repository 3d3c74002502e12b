"""A process's stdio wired to the guest: containerd's FIFOs on one side, the agent's
ReadStdout/ReadStderr/WriteStdin/CloseStdin on the other."""

from __future__ import annotations

from shim.agent_client import BadAnswer
from shim.guest_agent import GuestAgent
from shim.pod.process import Process
from shim.pod.stdio import CHUNK, InputCopier, OutputCopier


def attach(process: Process, agent: GuestAgent) -> None:
    """Give the process its copiers (started by `start`, once the guest has the process)."""
    cid, eid = process.container_id, process.agent_exec_id

    def reader(stream: str):
        async def read() -> bytes:
            return await agent.read_output(stream, cid, eid, CHUNK)

        return read

    copiers = []
    if process.stdio.stdout:
        copiers.append(OutputCopier("stdout", process.stdio.stdout, reader("stdout")))
    if process.stdio.stderr and not process.stdio.terminal:
        copiers.append(OutputCopier("stderr", process.stdio.stderr, reader("stderr")))
    process.output_copiers = copiers
    if process.stdio.stdin:

        async def write(data: bytes) -> None:
            view = memoryview(data)
            while view:
                chunk = bytes(view[:CHUNK])
                taken = await agent.write_stdin(cid, eid, chunk)
                # 0 would resend forever; more than sent answers no write of ours
                if not 0 < taken <= len(chunk):
                    raise BadAnswer(
                        f"the agent answered WriteStdin of {process.name} with "
                        f"len={taken} for {len(chunk)} bytes sent"
                    )
                view = view[taken:]

        async def close() -> None:
            await agent.close_stdin(cid, eid)

        process.stdin_copier = InputCopier(process.stdio.stdin, write, close)


def start(process: Process) -> None:
    """Start copying: only once the agent knows the process (earlier reads get NOT_FOUND)."""
    for copier in process.output_copiers:
        copier.start()
    if process.stdin_copier is not None:
        process.stdin_copier.start()


async def drain(process: Process, timeout: float) -> list[str]:
    """After an exit: let the output end (within `timeout` each), stop the input; the
    streams that did not end."""
    late = [copier.name for copier in process.output_copiers if not await copier.wait(timeout)]
    if process.stdin_copier is not None:
        process.stdin_copier.stop()
    return late
