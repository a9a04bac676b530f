from platformctl.transport.base import (
    AuthenticationFailed,
    ConnectFailed,
    HostKeyMismatch,
    RemoteOutput,
    Transport,
    TransportError,
)

__all__ = [
    "AuthenticationFailed",
    "ConnectFailed",
    "HostKeyMismatch",
    "RemoteOutput",
    "Transport",
    "TransportError",
]
