"""Step 4: the module's host must be on the allowlist, pinned, and not root."""

from __future__ import annotations

import re

from platformctl.models import HostConfig
from platformctl.outcomes import PolicyViolation
from platformctl.policy.compose_path import check_remote_root

_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_ADDRESS = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]*")  # DNS name, IPv4 or IPv6
_KEY_TYPE = re.compile(r"(ssh-|ecdsa-|sk-)[a-z0-9@.-]+")


def pinned_key_lines(known_hosts: str) -> list[str]:
    """The usable known_hosts lines of an inline pin (comments and blanks dropped)."""
    lines = [ln.strip() for ln in known_hosts.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def is_inline_pin(known_hosts: str) -> bool:
    """Inline key lines always contain a space; a file path never does."""
    return " " in known_hosts.strip()


def check_host(name: str, hosts: dict[str, HostConfig]) -> HostConfig:
    host = hosts.get(name)
    if host is None:
        raise PolicyViolation(f"host {name!r} is not in the hosts.yaml allowlist")
    if host.user == "root" or not _USER.fullmatch(host.user):
        raise PolicyViolation(f"host {name!r}: user {host.user!r} is not allowed (never root; a plain user name)")
    if not _ADDRESS.fullmatch(host.address):
        raise PolicyViolation(f"host {name!r}: invalid address {host.address!r}")
    check_remote_root(host.remote_root)
    if not host.known_hosts.strip():
        raise PolicyViolation(f"host {name!r} has no pinned SSH host key (known_hosts)")
    if is_inline_pin(host.known_hosts):
        lines = pinned_key_lines(host.known_hosts)
        if not lines:
            raise PolicyViolation(f"host {name!r} has no pinned SSH host key (known_hosts holds only comments)")
        for line in lines:
            fields = line.split()
            key_at = 2 if fields[0].startswith("@") else 1
            if line.startswith("@revoked") or len(fields) < key_at + 2 or not _KEY_TYPE.fullmatch(fields[key_at]):
                raise PolicyViolation(f"host {name!r}: known_hosts line is not a pinned key: {line[:60]!r}")
    if not host.client_key.strip():
        raise PolicyViolation(f"host {name!r} has no client_key")
    return host
