"""Step 6 policy: reading `docker compose ps --all --format json` and judging it."""

from __future__ import annotations

import json

import pytest

from platformctl.models import ServiceObservation
from platformctl.policy.health import UnreadablePs, observe, verdict

SERVICE = "honcho-redis"


def row(state: str = "running", health: str = "healthy", service: str = SERVICE, n: int = 1) -> dict:
    return {"Name": f"core-{service}-{n}", "Service": service, "State": state, "Health": health, "ExitCode": 0}


def lines(*rows: dict) -> str:
    """Compose >= 2.21: one JSON object per line."""
    return "".join(json.dumps(r) + "\n" for r in rows)


def array(*rows: dict) -> str:
    """Compose < 2.21: one JSON array."""
    return json.dumps(list(rows))


def judge(stdout: str) -> tuple[str, str, str]:
    seen = observe(stdout, SERVICE)
    return seen.state, seen.health, verdict(seen)


@pytest.mark.parametrize("fmt", [lines, array], ids=["object-per-line", "array"])
def test_both_output_formats_are_read(fmt):
    assert judge(fmt(row())) == ("running", "healthy", "healthy")
    assert judge(fmt(row("running", "starting"))) == ("running", "starting", "waiting")


def test_pretty_printed_array_is_read():
    assert judge(json.dumps([row()], indent=2)) == ("running", "healthy", "healthy")


def test_blank_lines_and_surrounding_whitespace_are_ignored():
    assert judge("\n  " + json.dumps(row()) + "\n\n") == ("running", "healthy", "healthy")


def test_empty_health_means_no_healthcheck_so_running_is_enough():
    assert judge(lines(row("running", ""))) == ("running", "", "healthy")


@pytest.mark.parametrize(
    "state, health",
    [
        ("running", "starting"),
        ("running", "unhealthy"),
        ("restarting", ""),
        ("restarting", "unhealthy"),
        ("created", ""),
        ("paused", ""),
    ],
)
def test_not_yet_healthy_is_waiting(state, health):
    assert judge(lines(row(state, health)))[2] == "waiting"


@pytest.mark.parametrize("state", ["exited", "dead"])
@pytest.mark.parametrize("health", ["", "healthy", "unhealthy"])
def test_exited_or_dead_is_failed_whatever_the_health(state, health):
    assert judge(lines(row(state, health)))[2] == "failed"


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([row(n=1), row("running", "starting", n=2)], ("running", "starting", "waiting")),
        ([row(n=1), row("exited", "", n=2), row("running", "starting", n=3)], ("exited", "", "failed")),
        ([row("running", "unhealthy", n=1), row("dead", "", n=2)], ("dead", "", "failed")),
        ([row(n=1), row("running", "", n=2)], ("running", "healthy", "healthy")),
    ],
    ids=["healthy+starting", "healthy+exited+starting", "unhealthy+dead", "all-healthy"],
)
def test_several_containers_reduce_to_the_worst(rows, expected):
    assert judge(lines(*rows)) == expected
    assert judge(array(*rows)) == expected


@pytest.mark.parametrize("state", ["exited", "dead"])
def test_a_stopped_containers_exit_code_is_read(state):
    stopped = {**row(state, ""), "ExitCode": 137}
    assert observe(lines(stopped), SERVICE).exit_code == 137


def test_a_running_container_has_no_exit_code():
    assert observe(lines({**row(), "ExitCode": 3}), SERVICE).exit_code is None


@pytest.mark.parametrize("code", ["1", 1.0, True, -1, 256, None])
def test_an_exit_code_that_is_not_one_is_not_kept(code):
    assert observe(lines({**row("exited", ""), "ExitCode": code}), SERVICE).exit_code is None


def test_the_worst_container_brings_its_exit_code():
    stdout = lines(row(n=1), {**row("exited", "", n=2), "ExitCode": 2})
    seen = observe(stdout, SERVICE)
    assert (seen.state, seen.exit_code, verdict(seen)) == ("exited", 2, "failed")


def test_exited_one_off_containers_of_compose_run_are_not_the_service():
    labels = f"com.docker.compose.oneoff=True,com.docker.compose.service={SERVICE}"
    one_off = {**row("exited", ""), "Name": f"core-{SERVICE}-run-0123", "ExitCode": 1, "Labels": labels}
    assert judge(lines(row(), one_off)) == ("running", "healthy", "healthy")
    assert judge(lines(one_off)) == ("", "", "waiting")
    service_own = {**one_off, "Labels": labels.replace("oneoff=True", "oneoff=False")}
    assert judge(lines(row(), service_own))[2] == "failed"


def test_other_services_rows_are_ignored():
    stdout = lines(row("exited", "", service="postgres"), row(), row("running", "unhealthy", service="honcho-redis-2"))
    assert judge(stdout) == ("running", "healthy", "healthy")


def test_only_other_services_means_absent():
    assert judge(lines(row(service="postgres"))) == ("", "", "waiting")


def test_a_row_without_service_counts_as_ours():
    bare = {"Name": "x", "State": "exited", "Health": ""}
    assert judge(lines(row(), bare))[2] == "failed"


@pytest.mark.parametrize("stdout", ["", "   \n\n", "[]"])
def test_empty_output_is_absent_and_waiting(stdout):
    assert judge(stdout) == ("", "", "waiting")


@pytest.mark.parametrize(
    "stdout",
    [
        "no such service: honcho-redis",
        "NAME   IMAGE   STATUS\ncore-honcho-redis-1   redis   Up",
        json.dumps(row()) + "\n{truncated",
        "[" + json.dumps(row()),
        json.dumps(row(), indent=2),
        "[" * 100_000,  # past the parser's recursion limit: a RecursionError, not a JSON error
    ],
    ids=["error-text", "table-format", "truncated-line", "truncated-array", "pretty-object", "nested-100k"],
)
def test_non_json_raises_unreadable(stdout):
    with pytest.raises(UnreadablePs, match="not JSON"):
        observe(stdout, SERVICE)


@pytest.mark.parametrize("stdout", ['"running"', "[1, 2]", '[{"State": "running"}, "x"]', "42"])
def test_json_that_is_not_objects_raises_unreadable(stdout):
    with pytest.raises(UnreadablePs, match="not a list of objects"):
        observe(stdout, SERVICE)


@pytest.mark.parametrize(
    "state, health, expected",
    [
        ("running", "healthy", "healthy"),
        ("running", "", "healthy"),
        ("running", "starting", "waiting"),
        ("running", "unhealthy", "waiting"),
        ("restarting", "", "waiting"),
        ("", "", "waiting"),
        ("exited", "", "failed"),
        ("dead", "healthy", "failed"),
    ],
)
def test_verdict_table(state, health, expected):
    assert verdict(ServiceObservation(state=state, health=health)) == expected


@pytest.mark.parametrize("field", ["State", "Health"])
def test_state_and_health_a_host_prints_are_never_stored_verbatim(field):
    row = {"Service": "honcho-redis", "State": "running", "Health": "healthy", field: "password=hunter2 AKIAXXXX"}
    seen = observe(json.dumps(row), "honcho-redis")
    assert "hunter2" not in seen.model_dump_json()
    assert getattr(seen, field.lower()) == "unknown" and verdict(seen) == "waiting"
