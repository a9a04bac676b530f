"""Connecting to Temporal the way the worker does (and tests and scripts can)."""

from __future__ import annotations

import dataclasses
import logging

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.failure.v1 import Failure
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DefaultFailureConverter, PayloadConverter
from temporalio.runtime import Runtime

from platformctl.config import Settings

log = logging.getLogger(__name__)

PLATFORM_MODULE = SearchAttributeKey.for_keyword("PlatformModule")
PLATFORM_HOST = SearchAttributeKey.for_keyword("PlatformHost")
PLATFORM_STATUS = SearchAttributeKey.for_keyword("PlatformStatus")
# On the lock and module-state workflows ("lock", "module_state"): the Web UI's list tells them from applies.
PLATFORM_KIND = SearchAttributeKey.for_keyword("PlatformKind")
SEARCH_ATTRIBUTES = (PLATFORM_MODULE, PLATFORM_HOST, PLATFORM_STATUS, PLATFORM_KIND)


class PlainFailureConverter(DefaultFailureConverter):
    """Our failures (ApplicationError: a contract type and a message that says why) without
    the Python stack trace, which the Web UI shows as an apply's result and which tells an
    operator nothing. Other failures (a bug) keep theirs."""

    def to_failure(self, exception: BaseException, payload_converter: PayloadConverter, failure: Failure) -> None:
        super().to_failure(exception, payload_converter, failure)
        while True:
            if failure.HasField("application_failure_info"):
                failure.stack_trace = ""
            if not failure.HasField("cause"):
                return
            failure = failure.cause


# The pydantic converter every client and worker of this platform uses.
DATA_CONVERTER = dataclasses.replace(pydantic_data_converter, failure_converter_class=PlainFailureConverter)


_shown: set[str] = set()


def unshown_notices(settings: Settings) -> list[str]:
    """The connection's notices (deprecated names used) not yet shown by this process:
    each entry point shows them its own way, once."""
    fresh = [n for n in settings.temporal.notices if n not in _shown]
    _shown.update(fresh)
    return fresh


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """Connect as the temporal CLI would with the same environment (Settings.temporal);
    `runtime`: one with telemetry (metrics), None is the SDK's default runtime."""
    # Reads the TLS files here: an unreadable one fails the connection, not the settings.
    config = settings.temporal.profile.to_client_connect_config()
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.namespace,
        data_converter=DATA_CONVERTER,
        tls=config.get("tls", False),
        api_key=config.get("api_key"),
        rpc_metadata=config.get("rpc_metadata", {}),
        runtime=runtime,
    )


def connect_hint(settings: Settings, why: str) -> str:
    """What to add to a failed connection's message when TLS has no client certificate: a
    server that requires one refuses after the TLS 1.3 handshake, and the SDK then reports
    a bare transport error."""
    profile = settings.temporal.profile
    has_client_cert = profile.tls is not None and profile.tls.client_cert is not None
    if not settings.temporal.tls or has_client_cert or profile.api_key is not None or "tcp connect error" in why:
        return ""
    return ("; TLS is on without a client certificate: if the server requires one (mTLS), set "
            "TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH")


async def register_search_attributes(client: Client, namespace: str) -> None:
    """Workflows upsert these; on a server without them every workflow task fails."""
    existing = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    known = set(existing.custom_attributes) | set(existing.system_attributes)
    missing = {k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in SEARCH_ATTRIBUTES if k.name not in known}
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
        log.info("registered search attributes %s", ", ".join(sorted(missing)))
