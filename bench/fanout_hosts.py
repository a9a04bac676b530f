"""Fan-out hosts for the benchmarks: N gated test sshd hosts, 10 slow services each.

A SYNC context manager (start_sshd is blocking; it takes ~1 s per host):

    with fanout_hosts() as fan:                      # 4 hosts, 127.0.0.1-4, 10 services each
    with fanout_hosts(project_per_service=True) as fan:  # the same 40 services, 40 projects

Each host is a real sshd from tests/sshd.py's `start_sshd(gate=True)`, as the
tests start it: the deploy key's logins run host/platform-gate (forced
command), the host key is pinned, `docker` and `git` are bench/instant_host.py's
instant stand-ins. Every service's behaviour is `slow spans=on`: `up -d` sleeps
1 s and records its start and end; `ps` reports the service running and healthy. One project per
host is one compose file, `compose/fanout/compose.yaml`, holding the host's 10 services; with
`project_per_service` each service has its own `compose/<service>/compose.yaml`
(the stand-in names the project after the file's directory). Service names
are unique over all hosts (`fan1-s00` ... `fan4-s09`), so a module's id can
be its service's name.

What `fan` (a Fanout) gives:

    fan.hosts                    list of FanoutHost, one per sshd
      .name                      hosts.yaml key ("fan1" ...)
      .host_config()             platformctl HostConfig (address, port, user,
                                 remote_root, pinned known_hosts line, gated client key)
      .hosts_yaml_entry()        the same as a hosts.yaml entry (dict)
      .ups                       list of Up(compose_file, service) in order;
                                 compose_file is relative to remote_root, as in module.yaml
      .up_calls()                argv of every `up -d` the stand-in ran since the last reset
      .overlaps()                pairs of `up` runs of one project that overlapped in time
      .sshd                      the tests.sshd.SshHost, for anything else
    fan.ups                      every (host, Up) pair, host by host
    fan.hosts_yaml()             {"hosts": {...}} for a platform root's hosts.yaml
    fan.known_hosts_path         a known_hosts file pinning every host's key
    fan.reset()                  clear the hosts' call logs (before each timed run)
    fan.check_ups()              raise unless every host ran exactly its `up -d`s (any order),
                                 once each since the last reset, with no overlap in a project
    fan.ansible_inventory()      a YAML inventory (dict) for bench/ansible_fanout.py

Ansible cannot pass the gate (its modules, and Mitogen, run Python on the
host), so each host also authorizes a second key, `FanoutHost.ansible_key`,
WITHOUT the forced command (but with `restrict`): Ansible runs ungated, an
advantage to Ansible. Our code uses only the gated key.

`tests.sshd.DEFAULT_HEAD_SHA` is what the stand-in git reports as the checkout.
Needs root, like the sshd tests. Every sshd is stopped on exit, even on error.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.sshd when run as a script

from bench.instant_host import make_instant
from platformctl.models import HostConfig  # noqa: E402
from tests.sshd import SshHost, make_keypair, start_sshd, unavailable_reason  # noqa: E402

SERVICES_PER_HOST = 10
SHARED_COMPOSE_FILE = "compose/fanout/compose.yaml"


@dataclass(frozen=True)
class Up:
    compose_file: str  # relative to the host's remote_root
    service: str


@dataclass
class FanoutHost:
    name: str
    sshd: SshHost
    ups: list[Up]
    ansible_key: str  # private key path; its login is NOT gated (Ansible only)

    def host_config(self) -> HostConfig:
        return self.sshd.host_config(self.name)

    def hosts_yaml_entry(self) -> dict[str, Any]:
        return self.host_config().model_dump(exclude={"name"})

    def compose_path(self, up: Up) -> str:
        return f"{self.sshd.remote_root}/{up.compose_file}"

    def expected_argv(self, up: Up) -> list[str]:
        return ["docker", "compose", "-f", self.compose_path(up), "up", "-d", up.service]

    def up_calls(self) -> list[list[str]]:
        return [argv for argv in self.sshd.calls() if argv[4:6] == ["up", "-d"]]

    def _runs(self) -> list[list[dict[str, Any]]]:
        """Per project (compose file), its `up` runs in order of start, from the spans
        the stand-in records (behaviour option `spans=on`)."""
        path = Path(self.sshd.state_dir, "spans.jsonl")
        spans = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        by_file: dict[str, list[dict[str, Any]]] = {}
        for span in spans:
            by_file.setdefault(span["file"], []).append(span)
        return [sorted(runs, key=lambda s: s["start"]) for runs in by_file.values()]

    def overlaps(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """`up` runs of one project that overlapped in time."""
        return [(a, b) for runs in self._runs() for a, b in zip(runs, runs[1:], strict=False) if b["start"] < a["end"]]

    def idle_between_ups(self) -> list[float]:
        """Seconds each project stood idle between the end of one `up` and the start of the next."""
        return [b["start"] - a["end"] for runs in self._runs() for a, b in zip(runs, runs[1:], strict=False)]

    def reset(self) -> None:
        self.sshd.reset()  # also forgets the behaviours
        Path(self.sshd.state_dir, "spans.jsonl").unlink(missing_ok=True)
        for up in self.ups:
            self.sshd.set_behaviour(up.service, "slow spans=on")


@dataclass
class Fanout:
    hosts: list[FanoutHost]
    known_hosts_path: str

    @property
    def ups(self) -> list[tuple[FanoutHost, Up]]:
        return [(host, up) for host in self.hosts for up in host.ups]

    def hosts_yaml(self) -> dict[str, Any]:
        return {"hosts": {host.name: host.hosts_yaml_entry() for host in self.hosts}}

    def reset(self) -> None:
        for host in self.hosts:
            host.reset()

    def check_ups(self) -> None:
        for host in self.hosts:
            want = [host.expected_argv(up) for up in host.ups]
            got = host.up_calls()
            if sorted(got) != sorted(want):
                raise RuntimeError(f"{host.name}: expected {len(want)} `up -d` calls, one per service, got {got}")
            overlapping = host.overlaps()
            if overlapping:
                raise RuntimeError(f"{host.name}: `up` runs of one project overlapped: {overlapping}")

    def ansible_inventory(self) -> dict[str, Any]:
        """One group, `fanout`; each host's `ups` var lists {file, service} in order."""
        return {
            "fanout": {
                "hosts": {
                    host.name: {
                        "ansible_host": host.sshd.address,
                        "ansible_port": host.sshd.port,
                        "ansible_user": host.sshd.user,
                        "ansible_ssh_private_key_file": host.ansible_key,
                        "ansible_python_interpreter": "/usr/bin/python3",  # no interpreter discovery
                        "ups": [{"file": host.compose_path(up), "service": up.service} for up in host.ups],
                    }
                    for host in self.hosts
                }
            }
        }


def _write_compose_files(sshd: SshHost, ups: list[Up]) -> None:
    by_file: dict[str, list[str]] = {}
    for up in ups:
        by_file.setdefault(up.compose_file, []).append(up.service)
    for rel, services in by_file.items():
        path = Path(sshd.remote_root, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("services:\n" + "".join(f"  {s}:\n    image: busybox:1\n" for s in services))


def _authorize_ungated_key(sshd: SshHost) -> str:
    key = Path(sshd.base_dir, "ansible_key")
    public = make_keypair(key, "ansible-fanout-ungated")
    with open(Path(sshd.base_dir, "authorized_keys"), "a") as f:  # sshd reads it afresh at each login
        f.write(f"restrict {public}\n")
    return str(key)


def _start_host(index: int, project_per_service: bool) -> FanoutHost:
    name = f"fan{index}"
    names = [f"{name}-s{j:02d}" for j in range(SERVICES_PER_HOST)]
    ups = [Up(f"compose/{s}/compose.yaml" if project_per_service else SHARED_COMPOSE_FILE, s) for s in names]
    sshd = start_sshd(f"127.0.0.{index}", gate=True)
    try:
        _write_compose_files(sshd, ups)
        make_instant(sshd)
        host = FanoutHost(name, sshd, ups, _authorize_ungated_key(sshd))
        host.reset()
        return host
    except BaseException:
        sshd.stop()
        raise


@contextmanager
def fanout_hosts(n_hosts: int = 4, *, project_per_service: bool = False) -> Iterator[Fanout]:
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"cannot start the fan-out hosts: {reason}")
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="fanout-") as tmp:
        hosts = []
        for index in range(1, n_hosts + 1):
            host = _start_host(index, project_per_service)
            stack.callback(host.sshd.stop)
            hosts.append(host)
        known_hosts = Path(tmp, "known_hosts")
        known_hosts.write_text("".join(h.sshd.host_key_line + "\n" for h in hosts))
        yield Fanout(hosts, str(known_hosts))
