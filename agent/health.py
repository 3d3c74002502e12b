"""grpc.Health: the shim's "is the agent up" probe."""

from __future__ import annotations

from agent import __version__
from protos.kata import health_pb2

API_VERSION = "0.0.1"  # Kata's agent API version string


class HealthService:
    async def Check(self, request: health_pb2.CheckRequest, context: object) -> object:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def Version(self, request: health_pb2.CheckRequest, context: object) -> object:
        return health_pb2.VersionCheckResponse(
            grpc_version=API_VERSION, agent_version=f"pykata-agent {__version__}"
        )
