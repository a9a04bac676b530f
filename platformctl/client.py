"""Connecting to Temporal the way the worker does (and tests and scripts can)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client, TLSConfig
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime

from platformctl.config import Settings

log = logging.getLogger(__name__)

SEARCH_ATTRIBUTES = tuple(
    SearchAttributeKey.for_keyword(name) for name in ("PlatformModule", "PlatformHost", "PlatformStatus")
)


def tls_from_env() -> TLSConfig | bool:
    """TEMPORAL_TLS_CERT/KEY/CA are file paths; any of them, TEMPORAL_TLS_SERVER_NAME
    (the name to verify) or TEMPORAL_API_KEY alone turns TLS on."""
    paths = {n: os.environ.get(f"TEMPORAL_TLS_{n}") for n in ("CERT", "KEY", "CA")}
    domain = os.environ.get("TEMPORAL_TLS_SERVER_NAME") or None
    if not any(paths.values()) and domain is None:
        return bool(os.environ.get("TEMPORAL_API_KEY"))
    data = {n: Path(p).read_bytes() if p else None for n, p in paths.items()}
    return TLSConfig(
        client_cert=data["CERT"], client_private_key=data["KEY"], server_root_ca_cert=data["CA"], domain=domain
    )


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """`runtime`: one with telemetry (metrics); None is the SDK's default runtime."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.namespace,
        data_converter=pydantic_data_converter,
        tls=tls_from_env(),
        api_key=os.environ.get("TEMPORAL_API_KEY") or None,
        runtime=runtime,
    )


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
