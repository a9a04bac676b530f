"""What of a host's output is kept: progress lines rebuilt from names, an error class, a digest."""

from __future__ import annotations

import hashlib

import pytest

from platformctl.policy.remote_output import PROGRESS_LINE, digest, error_class, progress
from tests.secret_corpus import HOST_ONLY, LEAKS

UP = """\
 Network core_default  Creating
 Network core_default  Created
 Volume "core_data"  Creating
 Container core-honcho-redis-1  Recreate
 Container core-honcho-redis-1  Recreated
 Container core-honcho-redis-1  Starting
 Container core-honcho-redis-1  Started
 redis Pulling
 redis Pulled
"""


def test_compose_progress_is_kept_as_names_and_verbs():
    assert progress("", UP) == [
        "Network core_default Creating", "Network core_default Created", "Volume core_data Creating",
        "Container core-honcho-redis-1 Recreate", "Container core-honcho-redis-1 Recreated",
        "Container core-honcho-redis-1 Starting", "Container core-honcho-redis-1 Started",
        "redis Pulling", "redis Pulled",
    ]  # fmt: skip
    assert all(PROGRESS_LINE.fullmatch(line) for line in progress("", UP))


@pytest.mark.parametrize(
    "line",
    [
        'level=warning msg="The \\"Xq9\\" variable is not set. Defaulting to a blank string."',
        "invalid interpolation format for services.app.environment.DB_PASSWORD: \"pa$$word{\"",
        'failed to read /opt/platform/compose/core/.env: line 3: unterminated quoted value "s3cr3t',
        "Container core-web-1  Started hunter2",  # a template line with anything after it is not one
        "Container core web 1  Started",
        "Error response from daemon: pull access denied for registry.example.com/app",
        "\x1b[32mContainer core-web-1  Started\x1b[0m",
    ],
)
def test_anything_else_is_not_kept(line):
    assert progress(line, line) == []


@pytest.mark.parametrize("leak", LEAKS + HOST_ONLY, ids=[leak.id for leak in LEAKS + HOST_ONLY])
def test_no_corpus_secret_survives_in_what_is_kept(leak):
    for code in (0, 1):
        kept = " ".join(progress(leak.text, leak.text)) + " " + str(error_class(code, False, leak.text, leak.text))
        assert [s for s in leak.secrets if s in kept] == []


@pytest.mark.parametrize(
    "stderr, expected",
    [
        ('invalid interpolation format for services.app.environment.DB_PASSWORD: "x${"', "interpolation"),
        ('failed to read /srv/.env: line 1: unexpected character "$" in variable name', "env_file"),
        ("Error response from daemon: pull access denied for app, repository does not exist", "image"),
        ("Error response from daemon: manifest unknown", "image"),
        ("Bind for 0.0.0.0:80 failed: port is already allocated", "port"),
        ("failed to solve: process \"/bin/sh -c make\" did not complete successfully", "build"),
        ("open /opt/platform/compose/core/compose.yaml: permission denied", "permission"),
        ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock", "engine"),
        ("no such service: honcho-redis", "config"),
        ("something nobody foresaw", "unknown"),
    ],
)
def test_a_failure_is_named_from_the_fixed_vocabulary(stderr, expected):
    assert error_class(1, False, "", stderr) == expected


def test_success_timeout_and_the_gate_need_no_text():
    assert error_class(0, False, "", "permission denied") is None
    assert error_class(None, True, "", "") == "timeout"
    assert error_class(126, False, "", "port is already allocated") == "gate"


def test_the_digest_tells_outputs_apart_without_holding_them():
    size, sha = digest("out", "err")
    assert size == 6 and sha == hashlib.sha256(b"out\0err").hexdigest()
    assert digest("oute", "rr") != digest("out", "err")
