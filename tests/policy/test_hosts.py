"""Step 4 policy: `check_host`, the allowlist, pinning and user checks."""

from __future__ import annotations

import pytest

from platformctl.models import HostConfig
from platformctl.outcomes import PolicyViolation
from platformctl.policy.hosts import check_host, is_inline_pin, pinned_key_lines
from tests.platform_files import PIN

KEY = PIN.split(" ", 1)[1]  # "ssh-ed25519 AAAA..."


def host(**over) -> HostConfig:
    fields = {
        "name": "rs2000",
        "address": "rs2000.example.ts.net",
        "user": "deploy",
        "remote_root": "/opt/platform",
        "known_hosts": PIN,
        "client_key": "~/.ssh/platform_deploy",
        **over,
    }
    return HostConfig(**fields)


def check(**over) -> HostConfig:
    return check_host("rs2000", {"rs2000": host(**over)})


def test_allowlisted_pinned_host_passes_and_is_returned():
    assert check() == host()


def test_unknown_host_is_rejected():
    with pytest.raises(PolicyViolation, match="host 'rs3000' is not in the hosts.yaml allowlist"):
        check_host("rs3000", {"rs2000": host()})


def test_lookup_is_exact():
    with pytest.raises(PolicyViolation, match="not in the hosts.yaml allowlist"):
        check_host("RS2000", {"rs2000": host()})


@pytest.mark.parametrize(
    "user",
    ["root", "Root", "root ", "", "deploy;id", "deploy$(id)", "de ploy", "-oProxyCommand=x", "deploy\n",
     "a" * 33, "1deploy"],
)
def test_root_and_non_plain_users_are_rejected(user):
    with pytest.raises(PolicyViolation, match="is not allowed"):
        check(user=user)


@pytest.mark.parametrize("user", ["deploy", "_svc", "ci-bot", "a" * 32])
def test_plain_users_pass(user):
    assert check(user=user).user == user


@pytest.mark.parametrize(
    "address",
    ["-oProxyCommand=x", "a b", "", "host;id", "$(id)", "host\n", "user@host", "host/x", ".host"],
)
def test_bad_addresses_are_rejected(address):
    with pytest.raises(PolicyViolation, match="invalid address"):
        check(address=address)


@pytest.mark.parametrize("address", ["rs2000.example.ts.net", "100.64.0.7", "fd7a:115c:a1e0::1", "localhost"])
def test_dns_names_and_ips_pass(address):
    assert check(address=address).address == address


@pytest.mark.parametrize("root", ["/", "opt/platform", "/opt/platform/", "/opt/../etc"])
def test_remote_root_is_checked(root):
    with pytest.raises(PolicyViolation, match="remote_root"):
        check(remote_root=root)


@pytest.mark.parametrize("known_hosts", ["", "   ", "\n\n"])
def test_missing_or_blank_known_hosts_is_rejected(known_hosts):
    with pytest.raises(PolicyViolation, match="no pinned SSH host key"):
        check(known_hosts=known_hosts)


@pytest.mark.parametrize(
    "known_hosts",
    [
        "rs2000.example.ts.net ssh-ed25519",
        f"{KEY}",
        "rs2000.example.ts.net not-a-key-type AAAA",
        "rs2000.example.ts.net ssh-ed25519 AAAA\nrs2000.example.ts.net garbage",
        f"@revoked rs2000.example.ts.net {KEY}",
        f"{PIN}\n@revoked rs2000.example.ts.net {KEY}",
        f"  @revoked rs2000.example.ts.net {KEY}",
        "@cert-authority *.ts.net",
    ],
    ids=[
        "no-key", "no-host", "bad-key-type", "second-line-malformed",
        "revoked", "revoked-second", "revoked-indented", "marker-without-key",
    ],
)
def test_malformed_or_revoked_inline_pins_are_rejected(known_hosts):
    with pytest.raises(PolicyViolation, match="known_hosts line is not a pinned key"):
        check(known_hosts=known_hosts)


@pytest.mark.parametrize(
    "known_hosts",
    [
        PIN,
        f"# rs2000, pinned 2024-05-01\n{PIN}\n\n",
        f"{PIN}\nrs2000.example.ts.net ecdsa-sha2-nistp256 AAAAE2VjZHNh",
        "|1|aGFzaA==|c2FsdA== sk-ssh-ed25519@openssh.com AAAAGnNr",
        f"@cert-authority *.example.ts.net {KEY}",
    ],
    ids=["single", "with-comment-and-blank", "two-keys", "hashed-host-sk-key", "cert-authority"],
)
def test_well_formed_inline_pins_pass(known_hosts):
    assert check(known_hosts=known_hosts).known_hosts == known_hosts


@pytest.mark.parametrize("known_hosts", ["# pin me later", "# TODO: add the key\n# (ask ops)"])
def test_inline_pin_with_only_comments_has_no_pinned_key(known_hosts):
    with pytest.raises(PolicyViolation):
        check(known_hosts=known_hosts)


def test_known_hosts_file_path_is_not_an_inline_pin():
    # The activity checks that the file exists and is not empty.
    assert check(known_hosts="~/.ssh/known_hosts_platform").known_hosts == "~/.ssh/known_hosts_platform"
    assert not is_inline_pin("~/.ssh/known_hosts_platform")
    assert is_inline_pin(PIN)


def test_pinned_key_lines_drop_comments_and_blanks():
    assert pinned_key_lines(f"# comment\n\n  {PIN}  \n#{PIN}\n") == [PIN]


@pytest.mark.parametrize("client_key", ["", "   "])
def test_missing_client_key_is_rejected(client_key):
    with pytest.raises(PolicyViolation, match="has no client_key"):
        check(client_key=client_key)
