"""Temporal client settings as the temporal CLI reads them (temporalio.envconfig), our
deprecated TLS names, and what `worker.py --dev` does with them (README, Configuration)."""

from __future__ import annotations

import pytest
from temporalio.client import TLSConfig

import worker
from platformctl import client
from platformctl.client import connect_hint, unshown_notices
from platformctl.config import Settings

NOT_HERE = "127.0.0.1:1"


def settings(**env: str) -> Settings:
    return Settings.from_env({"PLATFORM_ROOT": "/tmp", **env})


def connect_config(**env: str) -> dict:
    return dict(settings(**env).temporal.profile.to_client_connect_config())


def write_pair(tmp_path, prefix: str = "") -> dict[str, str]:
    """Client cert, key and CA files holding their own names."""
    paths = {}
    for name in ("cert", "key", "ca"):
        (tmp_path / f"{prefix}{name}").write_bytes(f"{prefix}{name}".encode())
        paths[name] = str(tmp_path / f"{prefix}{name}")
    return paths


@pytest.fixture(autouse=True)
def fresh_notices(monkeypatch):
    monkeypatch.setattr(client, "_shown", set())


# ---- what the temporal CLI reads, read the same way ------------------------------


def test_nothing_set_is_plain_localhost_and_an_api_key_alone_turns_tls_on():
    plain = settings()
    assert (plain.temporal_address, plain.namespace, plain.temporal.tls) == ("localhost:7233", "default", False)
    assert connect_config().get("tls", False) is False
    keyed = connect_config(TEMPORAL_API_KEY="sekrit")
    assert (keyed["tls"], keyed["api_key"]) == (True, "sekrit")
    assert "sekrit" not in repr(settings(TEMPORAL_API_KEY="sekrit"))  # settings may be logged


def test_empty_variables_count_as_unset():
    empty = settings(TEMPORAL_ADDRESS="", TEMPORAL_NAMESPACE="", TEMPORAL_API_KEY="", TEMPORAL_TLS="")
    assert (empty.temporal_address, empty.namespace, empty.temporal.tls) == ("localhost:7233", "default", False)


@pytest.mark.parametrize("api_key", [None, "k"])
def test_a_server_name_is_verified_with_or_without_an_api_key(api_key):
    env = {"TEMPORAL_TLS_SERVER_NAME": "ns.tmprl.cloud"} | ({"TEMPORAL_API_KEY": api_key} if api_key else {})
    tls = connect_config(**env)["tls"]
    assert isinstance(tls, TLSConfig) and tls.domain == "ns.tmprl.cloud"
    assert (tls.client_cert, tls.server_root_ca_cert) == (None, None)


def test_the_standard_names_are_read_as_files(tmp_path):
    files = write_pair(tmp_path)
    tls = connect_config(
        TEMPORAL_TLS_CLIENT_CERT_PATH=files["cert"], TEMPORAL_TLS_CLIENT_KEY_PATH=files["key"],
        TEMPORAL_TLS_SERVER_CA_CERT_PATH=files["ca"], TEMPORAL_TLS_SERVER_NAME="temporal.internal",
    )["tls"]
    assert isinstance(tls, TLSConfig)
    assert (tls.client_cert, tls.client_private_key, tls.server_root_ca_cert) == (b"cert", b"key", b"ca")
    assert tls.domain == "temporal.internal"


def test_grpc_headers_and_inline_data_as_the_cli_reads_them():
    config = connect_config(TEMPORAL_GRPC_META_X_TENANT="blue", TEMPORAL_TLS_CLIENT_CERT_DATA="c",
                            TEMPORAL_TLS_CLIENT_KEY_DATA="k")
    assert config["rpc_metadata"] == {"x-tenant": "blue"}
    assert (config["tls"].client_cert, config["tls"].client_private_key) == (b"c", b"k")


# ---- a profile, and the environment over it ---------------------------------------


def write_profiles(tmp_path, tls_files: dict[str, str]) -> str:
    path = tmp_path / "temporal.toml"
    path.write_text(
        '[profile.default]\naddress = "default.example:7233"\n\n'
        '[profile.prod]\naddress = "prod.example:7233"\nnamespace = "prod-ns"\napi_key = "from-file"\n'
        f'[profile.prod.tls]\nclient_cert_path = "{tls_files["cert"]}"\nclient_key_path = "{tls_files["key"]}"\n'
        '[profile.prod.grpc_meta]\nx-team = "platform"\n'
    )
    return str(path)


def test_temporal_profile_selects_a_profile_of_temporal_config_file(tmp_path):
    toml = write_profiles(tmp_path, write_pair(tmp_path))
    chosen = settings(TEMPORAL_CONFIG_FILE=toml, TEMPORAL_PROFILE="prod")
    assert (chosen.temporal_address, chosen.namespace) == ("prod.example:7233", "prod-ns")
    config = chosen.temporal.profile.to_client_connect_config()
    assert (config["api_key"], config["rpc_metadata"]) == ("from-file", {"x-team": "platform"})
    assert config["tls"].client_cert == b"cert"
    assert settings(TEMPORAL_CONFIG_FILE=toml).temporal_address == "default.example:7233"


def test_each_variable_overrides_the_profile_as_in_the_temporal_cli(tmp_path):
    toml = write_profiles(tmp_path, write_pair(tmp_path))
    other = write_pair(tmp_path, "other-")
    chosen = settings(
        TEMPORAL_CONFIG_FILE=toml, TEMPORAL_PROFILE="prod", TEMPORAL_ADDRESS="env.example:7233",
        TEMPORAL_API_KEY="from-env", TEMPORAL_TLS_CLIENT_CERT_PATH=other["cert"],
    )
    assert (chosen.temporal_address, chosen.namespace) == ("env.example:7233", "prod-ns")  # namespace: the file's
    config = chosen.temporal.profile.to_client_connect_config()
    assert config["api_key"] == "from-env"
    assert (config["tls"].client_cert, config["tls"].client_private_key) == (b"other-cert", b"key")
    off = settings(TEMPORAL_CONFIG_FILE=toml, TEMPORAL_PROFILE="prod", TEMPORAL_TLS="false")
    assert off.temporal.profile.to_client_connect_config()["tls"] is False and not off.temporal.tls


@pytest.mark.parametrize(
    "env, message",
    [
        ({"TEMPORAL_PROFILE": "staging"}, "Temporal client configuration ({toml}, TEMPORAL_PROFILE=staging): "
         "Profile 'staging' not found"),
        ({"TEMPORAL_TLS_CLIENT_CERT_PATH": "/c", "TEMPORAL_TLS_CLIENT_CERT_DATA": "c"},
         "Cannot specify both TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_CERT_DATA"),
        ({"TEMPORAL_TLS_CLIENT_CERT_PATH": "/c"}, "a Temporal client certificate needs its key"),
    ],
    ids=["no-such-profile", "path-and-data", "cert-without-key"],
)
def test_a_configuration_envconfig_refuses_is_a_value_error(tmp_path, env, message):
    toml = write_profiles(tmp_path, write_pair(tmp_path))
    with pytest.raises(ValueError) as refused:
        settings(TEMPORAL_CONFIG_FILE=toml, **env)
    assert message.format(toml=f"TEMPORAL_CONFIG_FILE={toml}") in str(refused.value)
    assert "\n" not in str(refused.value)


# ---- our deprecated names ----------------------------------------------------------

NOTICE = ("deprecated: TEMPORAL_TLS_CERT is now TEMPORAL_TLS_CLIENT_CERT_PATH, TEMPORAL_TLS_KEY is now "
          "TEMPORAL_TLS_CLIENT_KEY_PATH, TEMPORAL_TLS_CA is now TEMPORAL_TLS_SERVER_CA_CERT_PATH (the names the "
          "temporal CLI reads; the old ones still work for now)")


def test_the_deprecated_names_still_work_with_one_notice_once(tmp_path):
    files = write_pair(tmp_path)
    old = settings(TEMPORAL_TLS_CERT=files["cert"], TEMPORAL_TLS_KEY=files["key"], TEMPORAL_TLS_CA=files["ca"])
    tls = old.temporal.profile.to_client_connect_config()["tls"]
    assert (tls.client_cert, tls.client_private_key, tls.server_root_ca_cert) == (b"cert", b"key", b"ca")
    assert old.temporal.notices == (NOTICE,)
    assert unshown_notices(old) == [NOTICE]
    assert unshown_notices(old) == []  # once per process


def test_an_old_name_beside_its_standard_name_must_agree(tmp_path):
    files = write_pair(tmp_path)
    same = settings(TEMPORAL_TLS_CA=files["ca"], TEMPORAL_TLS_SERVER_CA_CERT_PATH=files["ca"])
    assert same.temporal.profile.to_client_connect_config()["tls"].server_root_ca_cert == b"ca"
    assert same.temporal.notices == ("deprecated: TEMPORAL_TLS_CA is now TEMPORAL_TLS_SERVER_CA_CERT_PATH (the names "
                                     "the temporal CLI reads; the old ones still work for now)",)
    with pytest.raises(ValueError, match=r"^TEMPORAL_TLS_KEY \(/a\) and TEMPORAL_TLS_CLIENT_KEY_PATH \(/b\) name "
                                         r"different files: set only TEMPORAL_TLS_CLIENT_KEY_PATH"):
        settings(TEMPORAL_TLS_KEY="/a", TEMPORAL_TLS_CLIENT_KEY_PATH="/b")
    with pytest.raises(ValueError, match=r"^TEMPORAL_TLS_CERT and TEMPORAL_TLS_CLIENT_CERT_DATA are both set"):
        settings(TEMPORAL_TLS_CERT="/a", TEMPORAL_TLS_CLIENT_CERT_DATA="pem")


def test_host_verification_cannot_be_disabled_and_the_notice_says_so():
    (notice,) = settings(TEMPORAL_TLS_DISABLE_HOST_VERIFICATION="true").temporal.notices
    assert notice.startswith("TEMPORAL_TLS_DISABLE_HOST_VERIFICATION is ignored")


def test_a_failed_tls_connection_without_a_client_certificate_hints_at_mtls():
    why = "transport error"
    assert "TEMPORAL_TLS_CLIENT_CERT_PATH" in connect_hint(settings(TEMPORAL_TLS_SERVER_NAME="t"), why)
    assert connect_hint(settings(), why) == ""  # no TLS
    assert connect_hint(settings(TEMPORAL_API_KEY="k"), why) == ""  # an API key authenticates instead
    assert connect_hint(settings(TEMPORAL_TLS="true"), "tcp connect error: refused") == ""  # nothing listened


# ---- --dev never stands in for a configured server -----------------------------------


@pytest.fixture
def nothing_listens(monkeypatch):
    monkeypatch.setattr(worker, "_listening", lambda address: False)

    def no_server(*args, **kwargs):
        raise AssertionError(f"a dev server was started: {args}")

    monkeypatch.setattr(worker.subprocess, "Popen", no_server)


def test_dev_starts_no_local_server_for_a_profile_naming_a_remote_address(tmp_path, nothing_listens):
    toml = tmp_path / "temporal.toml"
    toml.write_text('[profile.cloud]\naddress = "ns.a1b2c.tmprl.cloud:7233"\n')
    remote = settings(TEMPORAL_CONFIG_FILE=str(toml), TEMPORAL_PROFILE="cloud", PLATFORM_STATE_DIR=str(tmp_path))
    with pytest.raises(SystemExit, match=r"^--dev: nothing listens at ns.a1b2c.tmprl.cloud:7233, and the embedded "
                                         r"dev server starts only on localhost or a loopback address"):
        worker.start_dev_server(remote)


def test_dev_starts_no_plaintext_server_where_tls_is_asked_for(tmp_path, nothing_listens):
    keyed = settings(TEMPORAL_ADDRESS="localhost:7233", TEMPORAL_API_KEY="k", PLATFORM_STATE_DIR=str(tmp_path))
    with pytest.raises(SystemExit, match=r"^--dev: nothing listens at localhost:7233, and the embedded dev server "
                                         r"has no TLS"):
        worker.start_dev_server(keyed)
