"""platformctl.client: TLS settings from the environment (README, Configuration)."""

from __future__ import annotations

import pytest
from temporalio.client import TLSConfig

from platformctl.client import tls_from_env

TLS_VARS = ("TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY", "TEMPORAL_TLS_CA", "TEMPORAL_TLS_SERVER_NAME", "TEMPORAL_API_KEY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in TLS_VARS:
        monkeypatch.delenv(name, raising=False)


def test_nothing_set_is_plain_and_an_api_key_alone_is_tls(monkeypatch):
    assert tls_from_env() is False
    monkeypatch.setenv("TEMPORAL_API_KEY", "k")
    assert tls_from_env() is True


@pytest.mark.parametrize("api_key", [None, "k"])
def test_a_server_name_is_verified_with_or_without_an_api_key(monkeypatch, api_key):
    if api_key:
        monkeypatch.setenv("TEMPORAL_API_KEY", api_key)
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_NAME", "ns.tmprl.cloud")
    tls = tls_from_env()
    assert isinstance(tls, TLSConfig) and tls.domain == "ns.tmprl.cloud"
    assert (tls.client_cert, tls.server_root_ca_cert) == (None, None)


def test_files_are_read_and_the_server_name_kept(monkeypatch, tmp_path):
    for name, content in (("CERT", b"cert"), ("KEY", b"key"), ("CA", b"ca")):
        (tmp_path / name).write_bytes(content)
        monkeypatch.setenv(f"TEMPORAL_TLS_{name}", str(tmp_path / name))
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_NAME", "temporal.internal")
    tls = tls_from_env()
    assert isinstance(tls, TLSConfig)
    assert (tls.client_cert, tls.client_private_key, tls.server_root_ca_cert) == (b"cert", b"key", b"ca")
    assert tls.domain == "temporal.internal"
