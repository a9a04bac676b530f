"""The fan-out baselines: Ansible, plain and with Mitogen, over the fan-out hosts.

    run_ansible(fan, mitogen: bool) -> float     wall seconds of one `ansible-playbook` run

`fan` is a bench/fanout_hosts.Fanout. The playbook runs the SAME commands
our code sends, `docker compose -f FILE up -d SERVICE` as an argv (no
shell), for each service of each host: one host's services one after
another (a loop in one task), hosts in parallel. Host keys are pinned:
StrictHostKeyChecking=yes against the fixture's known_hosts, nothing else.

Ansible's modules (and Mitogen) run Python on the host, which the forced-
command gate refuses, so Ansible logs in with the hosts' second, UNGATED key
(fanout_hosts.FanoutHost.ansible_key): an advantage to Ansible.

Best plain setup: linear strategy, forks=10, pipelining, ControlMaster with
ControlPersist, no fact gathering, a fixed interpreter (no discovery). With
Mitogen: the same plus `strategy = mitogen_linear`. Everything lives in a
throw-away dir (ansible.cfg, inventory, playbook, control sockets, ANSIBLE_HOME):
no network, no galaxy. The time is the whole `ansible-playbook` process,
start-up included, from cold: no control master survives a run.

The hosts' call logs are reset first and checked after: a run raises unless
Ansible exited 0 and every `up -d` ran exactly once on its host, with no
overlap of `up` runs of one project.

    .venv/bin/python bench/ansible_fanout.py [-n RUNS]   (needs root, like the sshd tests)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for bench.* when run as a script

from bench.fanout_hosts import Fanout, fanout_hosts  # noqa: E402

VENV_BIN = Path(sys.executable).parent


def missing() -> str | None:
    """What of the `bench` extra is not installed, or None."""
    if not (VENV_BIN / "ansible-playbook").exists():
        return "ansible-core (its ansible-playbook)"
    return "mitogen" if find_spec("ansible_mitogen") is None else None


def _mitogen_strategies() -> Path:
    # Found, not imported: the strategy plugin is loaded by ansible-playbook itself.
    return Path(str(find_spec("ansible_mitogen").origin)).parent / "plugins" / "strategy"  # type: ignore[union-attr]

PLAYBOOK = """\
- hosts: fanout
  gather_facts: false
  tasks:
    - name: compose up, one service after another
      ansible.builtin.command:
        argv: [docker, compose, -f, "{{ item.file }}", up, -d, "{{ item.service }}"]
      loop: "{{ ups }}"
"""


def _config(tmp: Path, known_hosts: str, mitogen: bool) -> str:
    ssh_args = " ".join(
        [
            "-o ControlMaster=auto -o ControlPersist=60s",
            f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={known_hosts}",
            "-o IdentitiesOnly=yes -o BatchMode=yes",
        ]
    )
    strategy = f"strategy = mitogen_linear\nstrategy_plugins = {_mitogen_strategies()}\n" if mitogen else ""
    return (
        "[defaults]\n"
        f"inventory = {tmp / 'inventory.json'}\n"
        "forks = 10\n"
        "gathering = explicit\n"
        "host_key_checking = True\n"
        "retry_files_enabled = False\n"
        f"local_tmp = {tmp / 'local'}\n"
        f"{strategy}"
        "[ssh_connection]\n"
        "pipelining = True\n"
        f"ssh_args = {ssh_args}\n"
        f"control_path_dir = {tmp / 'cp'}\n"
        "control_path = %(directory)s/%%C\n"
    )


def _close_control_masters(control_dir: Path) -> None:
    """End the ControlPersist masters this run left, so none outlives it."""
    for socket in control_dir.glob("*"):
        subprocess.run(
            ["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "fanout-master"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
        )


def run_ansible(fan: Fanout, mitogen: bool) -> float:
    fan.reset()
    with tempfile.TemporaryDirectory(prefix="ansible-fanout-") as name:
        tmp = Path(name)
        (tmp / "cp").mkdir()
        (tmp / "ansible.cfg").write_text(_config(tmp, fan.known_hosts_path, mitogen))
        (tmp / "inventory.json").write_text(json.dumps(fan.ansible_inventory()))
        (tmp / "playbook.yml").write_text(PLAYBOOK)
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(tmp / "ansible.cfg"),
            "ANSIBLE_HOME": str(tmp / "home"),
            "ANSIBLE_NOCOLOR": "1",
        }
        started = time.perf_counter()
        try:
            done = subprocess.run(
                [str(VENV_BIN / "ansible-playbook"), str(tmp / "playbook.yml")],
                env=env,
                cwd=tmp,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=300,
            )
            wall = time.perf_counter() - started
        finally:
            _close_control_masters(tmp / "cp")
    if done.returncode != 0:
        raise RuntimeError(f"ansible-playbook exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    fan.check_ups()
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2, help="runs of each setup (default 2)")
    args = parser.parse_args()
    with fanout_hosts() as fan:
        print(f"{len(fan.ups)} x `docker compose -f FILE up -d SERVICE` (1 s each) over {len(fan.hosts)} hosts")
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.n):  # interleaved, so drift on a busy machine hits both alike
            for mitogen in (False, True):
                times[mitogen].append(run_ansible(fan, mitogen))
        for mitogen, label in ((False, "linear, forks=10, pipelining, ControlPersist"), (True, "mitogen_linear")):
            print(f"ansible, {label:<45} " + "  ".join(f"{t:6.2f} s" for t in times[mitogen]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
