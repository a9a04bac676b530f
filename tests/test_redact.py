"""The redactor: every secret shape, ordinary output untouched, the cap, speed."""

from __future__ import annotations

import random
import re
import time

import pytest

from platformctl import redact as redact_module
from platformctl.redact import MAX_STORED, REDACTED, redact, redact_and_cap
from tests.secret_corpus import ADVERSARIAL, KEEP, LEAKS, compose_log

SHA = "3f5e1c0a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f"
GHP = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"  # prefix + 36
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM_BODY = [
    "MIIEowIBAAKCAQEA7bq9xQ2kZ3Lr8cV1yN4mPpWf5tJ0hUaD9sQeXgR2vKcB3nLz",
    "Yx7Tq1wE8rF2uI9oP3aS5dG6hJ4kL0zX+/mN1bV7cC8xZ2qW3eR4tY5uI6oP7aS8",
    "dF9gH0jK1lZ2xC3vB4nM5qW6eR7tY8uI9oP0aS1dF2gH3jK4lZ5xC6vB7nM8q==",
]


def pem(label: str, newline: str = "\n", headers: tuple[str, ...] = ()) -> str:
    lines = [f"-----BEGIN {label}-----", *headers, *PEM_BODY, f"-----END {label}-----"]
    return newline.join(lines)


def redacted_pem(label: str, newline: str = "\n") -> str:
    return f"-----BEGIN {label}-----{newline}{REDACTED}{newline}-----END {label}-----"


# (input, a secret that must be gone, a substring that must remain). The kept
# substring pins the label and where the marker lands.
CASES = [
    # 1. key/value in env files, YAML and logs
    pytest.param("password=hunter2", "hunter2", "password=[REDACTED]", id="kv-equals"),
    pytest.param("  password: hunter2\n  user: bob", "hunter2", "password: [REDACTED]\n  user: bob", id="kv-yaml"),
    pytest.param("password = hunter2 # set", "hunter2", "password = [REDACTED] # set", id="kv-spaced"),
    pytest.param('APP_PASSWORD="hunter 2"', "hunter 2", 'APP_PASSWORD="[REDACTED]"', id="kv-double-quoted"),
    pytest.param("secret='s3 cr3t' next", "s3 cr3t", "secret='[REDACTED]' next", id="kv-single-quoted"),
    pytest.param("PassWord=Hunter2", "Hunter2", "PassWord=[REDACTED]", id="kv-case-insensitive"),
    pytest.param("passwd: hunter2", "hunter2", "passwd: [REDACTED]", id="kv-passwd"),
    pytest.param("Server=db;Uid=app;Pwd=hunter2;", "hunter2", "Uid=app;Pwd=[REDACTED];", id="kv-pwd-odbc"),
    pytest.param("token: tk-998877", "tk-998877", "token: [REDACTED]", id="kv-token"),
    pytest.param("api_key=ak998877", "ak998877", "api_key=[REDACTED]", id="kv-api_key"),
    pytest.param("X-Api-Key: ak998877", "ak998877", "X-Api-Key: [REDACTED]", id="kv-api-key-header"),
    pytest.param("apikey=ak998877", "ak998877", "apikey=[REDACTED]", id="kv-apikey"),
    pytest.param("client_secret=cs998877", "cs998877", "client_secret=[REDACTED]", id="kv-client_secret"),
    pytest.param("private_key = pk998877", "pk998877", "private_key = [REDACTED]", id="kv-private_key"),
    pytest.param("session_token=st998877", "st998877", "session_token=[REDACTED]", id="kv-session_token"),
    pytest.param("access_key: ak998877", "ak998877", "access_key: [REDACTED]", id="kv-access_key"),
    pytest.param("access_token=at998877 ok", "at998877", "access_token=[REDACTED] ok", id="kv-access_token"),
    pytest.param("refresh_token=rt998877", "rt998877", "refresh_token=[REDACTED]", id="kv-refresh_token"),
    pytest.param("auth_token: at998877", "at998877", "auth_token: [REDACTED]", id="kv-auth_token"),
    pytest.param("credentials=cr998877", "cr998877", "credentials=[REDACTED]", id="kv-credentials"),
    pytest.param("passphrase: correct-horse", "correct-horse", "passphrase: [REDACTED]", id="kv-passphrase"),
    pytest.param("DB_PASSWORD=hunter2", "hunter2", "DB_PASSWORD=[REDACTED]", id="env-DB_PASSWORD"),
    pytest.param(
        "    environment:\n      - POSTGRES_PASSWORD=hunter2\n      - POSTGRES_USER=app",
        "hunter2",
        "- POSTGRES_PASSWORD=[REDACTED]\n      - POSTGRES_USER=app",
        id="env-POSTGRES_PASSWORD-compose",
    ),
    pytest.param("REDIS_PASSWORD: hunter2", "hunter2", "REDIS_PASSWORD: [REDACTED]", id="env-REDIS_PASSWORD"),
    pytest.param("MYSQL_ROOT_PASSWORD=hunter2", "hunter2", "MYSQL_ROOT_PASSWORD=[REDACTED]", id="env-MYSQL_ROOT"),
    pytest.param("GITHUB_TOKEN=abc123def", "abc123def", "GITHUB_TOKEN=[REDACTED]", id="env-GITHUB_TOKEN"),
    pytest.param("SLACK_BOT_TOKEN=abc123def", "abc123def", "SLACK_BOT_TOKEN=[REDACTED]", id="env-SLACK_BOT_TOKEN"),
    pytest.param("spring.datasource.password=hunter2", "hunter2", "datasource.password=[REDACTED]", id="kv-dotted"),
    # 11. shell forms
    pytest.param("PGPASSWORD=hunter2 psql -h db", "hunter2", "PGPASSWORD=[REDACTED] psql -h db", id="PGPASSWORD"),
    pytest.param("MYSQL_PWD=hunter2 mysql", "hunter2", "MYSQL_PWD=[REDACTED] mysql", id="MYSQL_PWD"),
    pytest.param("export SECRET_KEY=sk998877", "sk998877", "export SECRET_KEY=[REDACTED]", id="export-SECRET_KEY"),
    # 2. JSON and Python dicts
    pytest.param(
        '{"secret": "abc998", "user": "bob"}', "abc998", '"secret": "[REDACTED]", "user": "bob"', id="json-secret"
    ),
    pytest.param('{"password":"abc998"}', "abc998", '{"password":"[REDACTED]"}', id="json-compact"),
    pytest.param('{"api_key": "abc998"}', "abc998", '"api_key": "[REDACTED]"', id="json-api_key"),
    pytest.param('{"token": "abc998", "n": 1}', "abc998", '"token": "[REDACTED]", "n": 1', id="json-token"),
    pytest.param('{"password": "ab\\"cd998", "n": 1}', "cd998", '"password": "[REDACTED]", "n": 1', id="json-escaped"),
    pytest.param(
        '{\n  "password": "abc998",\n  "user": "bob"\n}',
        "abc998",
        '"password": "[REDACTED]",\n  "user": "bob"\n}',
        id="json-multiline",
    ),
    pytest.param("{'client_secret': 'abc998'}", "abc998", "{'client_secret': '[REDACTED]'}", id="python-dict"),
    # 3. Authorization headers and bearer tokens
    pytest.param("Authorization: Bearer xyz998", "xyz998", "Authorization: Bearer [REDACTED]", id="auth-bearer"),
    pytest.param(
        "Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz", "Authorization: Basic [REDACTED]", id="auth-basic"
    ),
    pytest.param("Authorization: token xyz998", "xyz998", "Authorization: token [REDACTED]", id="auth-token"),
    pytest.param(
        '{"Authorization": "Bearer xyz998"}', "xyz998", '{"Authorization": "Bearer [REDACTED]"}', id="auth-json"
    ),
    pytest.param(
        "curl -H 'Authorization: Bearer xyz998' https://api.example.com/v1",
        "xyz998",
        "'Authorization: Bearer [REDACTED]' https://api.example.com/v1",
        id="auth-curl",
    ),
    pytest.param(
        "Proxy-Authorization: Basic cHJveHk6cHc=",
        "cHJveHk6cHc=",
        "Proxy-Authorization: Basic [REDACTED]",
        id="auth-proxy",
    ),
    pytest.param(
        "sent Bearer abcdEFGH1234ijkl5678 upstream",
        "abcdEFGH1234ijkl5678",
        "sent Bearer [REDACTED] upstream",
        id="bare-bearer",
    ),
    # 4. credentials in URLs
    pytest.param(
        "postgres://app:hunter2@db:5432/app", "hunter2", "postgres://app:[REDACTED]@db:5432/app", id="url-postgres"
    ),
    pytest.param("redis://:hunter2@redis:6379/0", "hunter2", "redis://:[REDACTED]@redis:6379/0", id="url-redis"),
    pytest.param(
        "https://deploy:hunter2@git.example.com/org/repo.git",
        "hunter2",
        "https://deploy:[REDACTED]@git.example.com/org/repo.git",
        id="url-https",
    ),
    pytest.param(
        "mongodb+srv://admin:hunter2@cluster0.example.net/db?retryWrites=true",
        "hunter2",
        "mongodb+srv://admin:[REDACTED]@cluster0.example.net/db?retryWrites=true",
        id="url-mongodb-srv",
    ),
    pytest.param(
        "DATABASE_URL=postgres://app:hunter2@db/app",
        "hunter2",
        "DATABASE_URL=postgres://app:[REDACTED]@db/app",
        id="url-in-env",
    ),
    # 5. query strings
    pytest.param("GET /cb?token=tk998&state=1", "tk998", "?token=[REDACTED]&state=1", id="query-token"),
    pytest.param("/x?a=1&access_token=at998&b=2", "at998", "&access_token=[REDACTED]&b=2", id="query-access_token"),
    pytest.param("/x?a=1&api_key=ak998", "ak998", "&api_key=[REDACTED]", id="query-api_key"),
    pytest.param("/blob?sv=2022&sig=Zx9%2Bq998&se=1", "Zx9%2Bq998", "&sig=[REDACTED]&se=1", id="query-sig"),
    pytest.param("/f?signature=s998&x=1", "s998", "?signature=[REDACTED]&x=1", id="query-signature"),
    pytest.param(
        "/o?X-Amz-Date=1&X-Amz-Signature=fe5f80f77d5fa3beca038a248ff027",
        "fe5f80f77d5fa3beca038a248ff027",
        "&X-Amz-Signature=[REDACTED]",
        id="query-amz-signature",
    ),
    pytest.param("/login?user=bob&password=pw998", "pw998", "&password=[REDACTED]", id="query-password"),
    # 6. private keys
    pytest.param(pem("RSA PRIVATE KEY"), PEM_BODY[1], redacted_pem("RSA PRIVATE KEY"), id="pem-rsa"),
    pytest.param(pem("EC PRIVATE KEY"), PEM_BODY[0], redacted_pem("EC PRIVATE KEY"), id="pem-ec"),
    pytest.param(pem("OPENSSH PRIVATE KEY"), PEM_BODY[2], redacted_pem("OPENSSH PRIVATE KEY"), id="pem-openssh"),
    pytest.param(pem("PRIVATE KEY"), PEM_BODY[1], redacted_pem("PRIVATE KEY"), id="pem-plain"),
    pytest.param(
        pem("ENCRYPTED PRIVATE KEY"), PEM_BODY[1], redacted_pem("ENCRYPTED PRIVATE KEY"), id="pem-encrypted"
    ),
    pytest.param(
        pem("RSA PRIVATE KEY", headers=("Proc-Type: 4,ENCRYPTED", "DEK-Info: AES-128-CBC,5B01E932988DC66B", "")),
        "5B01E932988DC66B",
        redacted_pem("RSA PRIVATE KEY"),
        id="pem-legacy-encrypted-headers",
    ),
    pytest.param(
        "ssh_key: |\n  " + pem("OPENSSH PRIVATE KEY", "\n  ") + "\nnext: 1",
        PEM_BODY[1],
        redacted_pem("OPENSSH PRIVATE KEY", "\n  ") + "\nnext: 1",
        id="pem-indented-yaml",
    ),
    pytest.param(pem("PRIVATE KEY", "\r\n"), PEM_BODY[1], redacted_pem("PRIVATE KEY", "\r\n"), id="pem-crlf"),
    pytest.param(
        '{"key": "' + pem("PRIVATE KEY", "\\n").replace("/", "\\/") + '\\n"}',
        PEM_BODY[1][:20],
        redacted_pem("PRIVATE KEY", "\\n"),
        id="pem-json-escaped",
    ),
    pytest.param(
        "\n".join(["-----BEGIN PRIVATE KEY-----", *PEM_BODY[:2]]) + "\n[... output cut ...]",
        PEM_BODY[1],
        "-----BEGIN PRIVATE KEY-----\n[REDACTED]\n[... output cut ...]",
        id="pem-no-end",
    ),
    pytest.param(
        "docker logs --tail 3:\n" + "\n".join([*PEM_BODY[1:], "-----END RSA PRIVATE KEY-----"]) + "\ndone",
        PEM_BODY[2],
        "docker logs --tail 3:\n[REDACTED]\n-----END RSA PRIVATE KEY-----\ndone",
        id="pem-no-begin",
    ),
    # 7. AWS
    pytest.param("key id AKIAIOSFODNN7EXAMPLE used", "IOSFODNN7EXAMPLE", "id AKIA[REDACTED] used", id="aws-akia"),
    pytest.param("ASIAY34FZKBOKMUTVV7A", "Y34FZKBOKMUTVV7A", "ASIA[REDACTED]", id="aws-asia"),
    pytest.param(
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI",
        "aws_secret_access_key = [REDACTED]",
        id="aws-secret-ini",
    ),
    pytest.param(
        "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI",
        "AWS_SECRET_ACCESS_KEY=[REDACTED]",
        id="aws-secret-env",
    ),
    # 8. GitHub
    pytest.param(f"cloned with {GHP} ok", GHP[4:], "with ghp_[REDACTED] ok", id="github-ghp"),
    *(
        pytest.param(f"t={prefix}_{GHP[4:]}", GHP[4:], f"{prefix}_[REDACTED]", id=f"github-{prefix}")
        for prefix in ("gho", "ghu", "ghs", "ghr")
    ),
    pytest.param(
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRS",
        "11ABCDEFG0123456789",
        "github_pat_[REDACTED]",
        id="github-pat",
    ),
    # 9. Slack, Stripe, Google, JWT
    pytest.param("hook xoxb-1234567890-0987654321-AbCdEfGh", "1234567890", "hook xoxb-[REDACTED]", id="slack-xoxb"),
    pytest.param("xoxp-1234567890-0987654321-AbCdEfGh", "AbCdEfGh", "xoxp-[REDACTED]", id="slack-xoxp"),
    pytest.param(
        "stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "4eC39HqLyjWDarjtT1zdp7dc", "sk_live_[REDACTED]", id="stripe-sk"
    ),
    pytest.param("rk_live_4eC39HqLyjWDarjtT1zdp7dc", "4eC39HqLyjWDarjtT1zdp7dc", "rk_live_[REDACTED]", id="stripe-rk"),
    pytest.param(
        "maps AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI ok",
        "SyDdI0hCZtE6vySjMm",
        "maps AIza[REDACTED] ok",
        id="google-api-key",
    ),
    pytest.param(f"session {JWT} expired", JWT.split(".")[1], "session [REDACTED] expired", id="jwt"),
    # 10. command-line flags
    pytest.param("app --password hunter2 --debug", "hunter2", "--password [REDACTED] --debug", id="flag-password"),
    pytest.param("app --password=hunter2", "hunter2", "--password=[REDACTED]", id="flag-password-equals"),
    pytest.param("app --token tk998 -v", "tk998", "--token [REDACTED] -v", id="flag-token"),
    pytest.param("app --api-key ak998", "ak998", "--api-key [REDACTED]", id="flag-api-key"),
    pytest.param("app --secret s998", "s998", "--secret [REDACTED]", id="flag-secret"),
    pytest.param('app --client-secret "c s998"', "c s998", '--client-secret "[REDACTED]"', id="flag-quoted"),
    # 12. docker login -p
    pytest.param(
        "docker login -u bot -p hunter2 registry.example.com",
        "hunter2",
        "docker login -u bot -p [REDACTED] registry.example.com",
        id="docker-login-p",
    ),
    # values that end where the form says, without eating what follows
    pytest.param("token: abc998\nnext: value", "abc998", "token: [REDACTED]\nnext: value", id="ends-at-eol"),
    pytest.param("password=pw998,user=bob", "pw998", "password=[REDACTED],user=bob", id="ends-at-comma"),
    pytest.param("password=pw998;user=bob", "pw998", "password=[REDACTED];user=bob", id="ends-at-semicolon"),
    pytest.param('password: "pw 998', "pw 998", 'password: "[REDACTED]', id="unclosed-quote"),
]

ORDINARY = [
    pytest.param(
        "[+] Running 3/3\n ✔ Network core_default  Created  0.1s\n"
        " ✔ Container core-db-1  Healthy  5.6s\n ✔ Container core-api-1  Started  0.4s\n",
        id="compose-up-output",
    ),
    pytest.param(SHA, id="git-sha"),
    pytest.param(f"checkout {SHA} (detached HEAD)", id="git-sha-in-text"),
    pytest.param("/opt/platform/compose/core/compose.yaml", id="path"),
    pytest.param("docker compose -f /opt/x.yaml up -d svc", id="compose-command"),
    pytest.param('{"Name":"x","State":"running","Health":"healthy"}', id="ps-json"),
    pytest.param(
        '{"Command":"\\"docker-entrypoint.sh postgres\\"","CreatedAt":"2024-05-01 10:00:00 +0000 UTC",'
        '"ExitCode":0,"Health":"healthy","ID":"4f1c2b3a","Image":"postgres:16","Labels":'
        '"com.docker.compose.project=core,com.docker.compose.service=db","LocalVolumes":"1",'
        '"Mounts":"core_pgdata","Name":"core-db-1","Names":"core-db-1","Networks":"core_default",'
        '"Ports":"5432/tcp","Project":"core","Publishers":[{"URL":"","TargetPort":5432,'
        '"PublishedPort":0,"Protocol":"tcp"}],"RunningFor":"2 hours ago","Service":"db","Size":"0B",'
        '"State":"running","Status":"Up 2 hours (healthy)"}',
        id="ps-json-full",
    ),
    pytest.param(
        '{"Name":"core-token-api-1","Service":"token-api","State":"running","Health":""}',
        id="ps-json-secret-word-name",
    ),
    pytest.param("docker compose -f /opt/x.yaml up -d token-api secret-store", id="secret-word-services"),
    pytest.param(
        'WARN[0000] The "DB_PASSWORD" variable is not set. Defaulting to a blank string.',
        id="compose-unset-var-warning",
    ),
    pytest.param('service "token-api" depends on undefined service "db": invalid compose project', id="compose-error"),
    pytest.param("echo \"$PW\" | docker login --password-stdin -u bot registry.example.com", id="password-stdin"),
    pytest.param("POSTGRES_PASSWORD_FILE: /run/secrets/db_password", id="file-reference"),
    pytest.param("open /run/secrets/db_password: no such file or directory", id="secret-path-in-error"),
    pytest.param("image: vault:1.15\nhost: db:5432\nredis:7-alpine", id="image-tags-and-ports"),
    pytest.param("image: secret-store:1.2\nconnect to token-api:8080 refused", id="secret-word-image-and-host"),
    pytest.param("secrets: [db_password, api_token]\ntokens: {}", id="yaml-flow-structure"),
    pytest.param('{"token": null, "secrets": ["db_password"]}', id="json-non-string-values"),
    pytest.param('{"secrets": {"db_password": {"file": "/opt/secrets/db"}}}', id="compose-config-json-secrets"),
    pytest.param("secrets:\n  db_password:\n    file: ./db_password.txt\n", id="compose-yaml-secrets"),
    pytest.param('password: ""\ntoken=\n"api_key": ""\nAPI_KEY=\nNEXT=1', id="empty-values"),
    pytest.param("Bearer authentication failed", id="bearer-prose"),
    pytest.param("unauthorized: authentication required", id="registry-unauthorized"),
    pytest.param(
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2VydGlmaWNhdGVzIGFyZSBwdWJsaWM=\n-----END CERTIFICATE-----",
        id="certificate",
    ),
    pytest.param("https://registry.example.com:5000/v2/ and http://db:5432", id="urls-without-credentials"),
    pytest.param(f"password={REDACTED} Authorization: Bearer {REDACTED}", id="already-redacted"),
    pytest.param("[... 12 chars truncated ...]\ntail", id="truncation-marker"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize(("text", "secret", "kept"), CASES)
def test_secret_is_hidden_and_label_kept(text: str, secret: str, kept: str) -> None:
    assert secret in text and kept not in text  # the case itself is sound
    out = redact(text)
    assert secret not in out
    assert kept in out


@pytest.mark.parametrize(("text", "secret", "kept"), CASES)
def test_redact_is_idempotent(text: str, secret: str, kept: str) -> None:
    once = redact(text)
    assert redact(once) == once


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_passes_through_unchanged(text: str) -> None:
    assert redact(text) == text


def test_several_secrets_on_one_line() -> None:
    text = f"DB_PASSWORD=pw1 url=postgres://u:pw2@db/x Authorization: Bearer pw3 {GHP} --token pw4"
    out = redact(text)
    assert out == (
        "DB_PASSWORD=[REDACTED] url=postgres://u:[REDACTED]@db/x "
        "Authorization: Bearer [REDACTED] ghp_[REDACTED] --token [REDACTED]"
    )


def test_random_mixtures_are_redacted_and_idempotent() -> None:
    fragments = (
        [(p.values[0], (p.values[1],)) for p in CASES]
        + [(leak.text, leak.secrets) for leak in LEAKS]
        + [(p.values[0], ()) for p in ORDINARY]
        + [(keep.text, ()) for keep in KEEP]
    )
    rng = random.Random(20240501)
    for _ in range(600):
        picked = rng.sample(fragments, 4)
        # One-line fragments share a line too; a block (a PEM tail) starts a line.
        multiline = any("\n" in fragment for fragment, _ in picked)
        text = ("\n" if multiline else rng.choice(["\n", " ", "; "])).join(fragment for fragment, _ in picked)
        out = redact(text)
        for fragment, secrets in picked:
            assert not any(secret in out for secret in secrets), (fragment, out)
        assert redact(out) == out


@pytest.mark.parametrize("pattern", redact_module._PATTERNS, ids=lambda p: p.name)
def test_every_pattern_is_needed(pattern, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without this pattern some case or corpus entry leaks: no pattern is dead weight."""
    monkeypatch.setattr(redact_module, "_PATTERNS", tuple(p for p in redact_module._PATTERNS if p is not pattern))
    failing = [
        p.id for p in CASES if p.values[1] in redact(p.values[0]) or p.values[2] not in redact(p.values[0])
    ] + [leak.id for leak in LEAKS if any(secret in redact(leak.text) for secret in leak.secrets)]
    assert failing, f"{pattern.name} is covered by the other patterns"


@pytest.mark.parametrize("pattern", redact_module._PATTERNS, ids=lambda p: p.name)
def test_needles_are_lowercase(pattern) -> None:
    # Needles are looked up in the lowercased text: an uppercase one would never hit.
    assert pattern.needles and all(n == n.lower() for n in pattern.needles)


# ---- the corpus: realistic leaks, and output that must survive ----------------


@pytest.mark.parametrize("leak", LEAKS, ids=lambda leak: leak.id)
def test_corpus_secret_is_gone_after_redact_and_cap(leak) -> None:
    out = redact_and_cap(leak.text)
    assert [secret for secret in leak.secrets if secret in out] == [], out
    assert REDACTED in out
    assert redact_and_cap(out) == out


@pytest.mark.parametrize("keep", KEEP, ids=lambda keep: keep.id)
def test_corpus_ordinary_output_is_unchanged(keep) -> None:
    assert redact_and_cap(keep.text) == keep.text


def test_corpus_is_large_enough_and_its_ids_unique() -> None:
    assert len(LEAKS) >= 80
    ids = [leak.id for leak in LEAKS] + [keep.id for keep in KEEP]
    assert len(ids) == len(set(ids))


def test_corpus_in_one_log_is_redacted_whole() -> None:
    """All leaks and keeps interleaved as one output: no rule runs into the next line."""
    text = "\n".join(f"{leak.text}\n{keep.text}" for leak, keep in zip(LEAKS, KEEP * 5, strict=False))
    out = redact_and_cap(text)
    assert [leak.id for leak in LEAKS if any(secret in out for secret in leak.secrets)] == []
    assert [keep.id for keep in KEEP if keep.text not in out] == []


# ---- plain text: what a host prints cannot drive the reader's terminal --------


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        # A failed poll's stderr that would redraw the summary line as a success.
        ("boom\x1b[2K\x1b[1Gapplied app@rs2000 exit 9\x1b[8m", "boomapplied app@rs2000 exit 9"),
        ("\x1b[32mContainer\x1b[0m core-app-1  \x1b[1mStarted\x1b[0m", "Container core-app-1  Started"),
        ("\x1b]0;pwned\x07title, \x1b]52;c;Y2xpcA==\x1b\\clipboard", "title, clipboard"),
        ("\x9b31mC1 CSI", "C1 CSI"),
        ("50%\rdone", "50%\\rdone"),  # a lone carriage return would overwrite the line
        ("lone \x1b and \x00 and \x7f", "lone \\x1b and \\x00 and \\x7f"),
        ("user \u202eevil\u202c", "user \\u202eevil\\u202c"),  # bidi override
        ("tab\tline\nCRLF\r\n", "tab\tline\nCRLF\r\n"),
    ],
    ids=["rewrite-line", "colours", "osc-title-clipboard", "c1-csi", "carriage-return", "controls", "bidi", "kept"],
)
def test_escape_sequences_are_dropped_and_other_controls_written_out(text: str, stored: str) -> None:
    assert redact(text) == stored == redact(stored)


def test_a_control_before_a_key_does_not_hide_its_secret() -> None:
    assert redact("\x1bpassword=hunter22") == "\\x1bpassword=[REDACTED]"


def test_an_escape_sequence_ending_on_a_keys_first_letter_does_not_hide_its_secret() -> None:
    # The CSI's final byte is the A: dropped, it leaves `uthorization: Basic ...`.
    out = redact("ok\n\x9b Authorization: Basic 0000000000000000 \n")
    assert out == "ok\nuthorization: Basic [REDACTED] \n"


# ---- the cap ----------------------------------------------------------------

MARKER = re.compile(r"\A\[\.\.\. (\d+) chars truncated \.\.\.\]\n")


def test_cap_leaves_short_text_alone_but_redacts_it() -> None:
    assert redact_and_cap("ok password=hunter2", limit=100) == "ok password=[REDACTED]"


def test_cap_exactly_at_limit_is_not_cut() -> None:
    text = "x" * 50
    assert redact_and_cap(text, limit=50) == text


def test_cap_keeps_the_tail_and_says_how_much_was_cut() -> None:
    text = "".join(f"line {i}\n" for i in range(5000)) + "Error: compose up failed\n"
    out = redact_and_cap(text, limit=1000)
    assert len(out) <= 1000
    marker = MARKER.match(out)
    assert marker is not None
    tail = out[marker.end() :]
    assert text.endswith(tail)
    assert int(marker[1]) + len(tail) == len(text)
    assert out.endswith("line 4999\nError: compose up failed\n")
    # The marker is sized for the worst case (a digit or two too long), and the
    # line the cut runs through is dropped.
    assert len(out) >= 1000 - 2 - len("line 4999\n")
    assert text[: len(text) - len(tail)].endswith("\n")


def test_cap_of_one_long_line_cuts_inside_it() -> None:
    text = "y" * 5000
    out = redact_and_cap(text, limit=1000)
    marker = MARKER.match(out)
    assert marker is not None and len(out) <= 1000
    assert int(marker[1]) + len(out) - marker.end() == len(text)


def test_cap_default_limit_is_max_stored() -> None:
    out = redact_and_cap("y" * (MAX_STORED + 500))
    assert MARKER.match(out)
    assert len(out) <= MAX_STORED


def test_cap_redacts_before_cutting_so_a_split_secret_is_not_left_behind() -> None:
    secret = "Zq" + "9" * 200
    text = "x" * 1000 + "\npassword=" + secret + "\nError: boom\n"
    limit = 120
    # Cutting first would keep the secret's end with its key cut off: unrecognizable.
    naive = text[-limit:]
    assert "9" * 50 in naive and "password" not in naive and redact(naive) == naive
    out = redact_and_cap(text, limit=limit)
    marker = MARKER.match(out)
    assert marker is not None
    assert "9" not in out[marker.end() :]
    assert out.endswith("password=[REDACTED]\nError: boom\n")


def test_cap_through_a_private_key_leaves_no_key_material() -> None:
    text = "log\n" * 500 + pem("RSA PRIVATE KEY") + "\nError: bad key\n"
    limit = len("-----END RSA PRIVATE KEY-----\nError: bad key\n") + 120
    out = redact_and_cap(text, limit=limit)
    assert not any(line[:12] in out for line in PEM_BODY)
    assert out.endswith(f"{REDACTED}\n-----END RSA PRIVATE KEY-----\nError: bad key\n")


STRADDLING = [
    pytest.param(f"pushing with {GHP[:4]}{GHP[4:] * 8}", GHP[4:], id="long-token"),
    pytest.param("Authorization: Bearer " + "Zq9" * 300, "Zq9" * 3, id="long-bearer"),
    pytest.param(pem("OPENSSH PRIVATE KEY", headers=()), PEM_BODY[1], id="pem-block"),
    pytest.param(
        "\n".join("keys-1  | " + line for line in pem("RSA PRIVATE KEY").splitlines()),
        PEM_BODY[2],
        id="prefixed-pem-block",
    ),
]


@pytest.mark.parametrize(("secret_text", "secret"), STRADDLING)
def test_cap_through_a_secret_keeps_no_piece_of_it(secret_text: str, secret: str) -> None:
    head = "".join(f"compose line {i}\n" for i in range(200))
    text = head + secret_text + "\nError: boom\n"
    # Cut where the secret's middle is, in the input (redacting shortens it).
    limit = len(text) - len(head) - len(secret_text) // 2
    naive = text[-limit:]
    assert any(secret[i : i + 8] in naive for i in range(len(secret) - 7))
    out = redact_and_cap(text, limit=limit)
    marker = MARKER.match(out)
    assert marker is not None and len(out) <= limit
    assert not any(secret[i : i + 8] in out for i in range(len(secret) - 7))
    assert out.endswith("\nError: boom\n")
    assert redact_and_cap(out, limit=limit) == out


def test_cap_is_idempotent() -> None:
    text = "a" * 10_000 + " token=tk998 " + "b" * 10_000
    once = redact_and_cap(text, limit=5_000)
    assert redact_and_cap(once, limit=5_000) == once


def test_cap_too_small_for_the_marker_keeps_a_bare_tail() -> None:
    assert redact_and_cap("abcdefghij", limit=4) == "ghij"
    assert redact_and_cap("abcdefghij", limit=0) == ""


# ---- speed --------------------------------------------------------------------

_MEGABYTE = 1_000_000
_MIXED = (
    " ✔ Container core-api-1  Started  0.5s\n"
    '{"Name":"core-api-1","State":"running","Health":"healthy"}\n'
    'DB_PASSWORD=pw1 token: pw2 "api_key": "pw3" Authorization: Bearer pw4 postgres://u:pw5@db/x ?sig=pw6\n'
    f"--password pw7 docker login -u a -p pw8 AKIAIOSFODNN7EXAMPLE {GHP} xoxb-1234567890-abc\n"
    f"sk_live_4eC39HqLyjWDarjtT1zdp7dc AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI {JWT}\n"
    + pem("RSA PRIVATE KEY")
    + "\n"
    + "\n".join(PEM_BODY[1:])
    + "\n-----END PRIVATE KEY-----\n"
)
# Secret-dense and adversarial inputs (see ADVERSARIAL): none may make a
# pattern backtrack, so time grows with the length of the input only.
_SLOW_SHAPES = {
    "mixed-realistic": ("", _MIXED),
    "corpus": ("", "\n".join(leak.text for leak in LEAKS) + "\n"),
    **ADVERSARIAL,
}


def _repeated(head: str, unit: str, size: int) -> str:
    return (head + unit * (size // len(unit) + 1))[:size]


def _best_seconds(text: str) -> float:
    """The fastest of three runs, in this thread's CPU time: a timing of the work, not of
    the other test processes sharing the cores."""
    times = []
    for _ in range(3):
        started = time.thread_time()
        redact_and_cap(text)
        times.append(time.thread_time() - started)
    return min(times)


@pytest.mark.parametrize(("head", "unit"), _SLOW_SHAPES.values(), ids=_SLOW_SHAPES.keys())
def test_a_megabyte_is_redacted_well_under_a_second(head: str, unit: str) -> None:
    text = _repeated(head, unit, _MEGABYTE)
    started = time.thread_time()
    redact_and_cap(text)
    assert time.thread_time() - started < 1.0


def test_64_kib_of_compose_output_is_redacted_in_under_50_ms() -> None:
    text = compose_log(MAX_STORED)
    assert len(text) == MAX_STORED and redact(text) == text
    assert _best_seconds(text) < 0.050


@pytest.mark.parametrize(("head", "unit"), _SLOW_SHAPES.values(), ids=_SLOW_SHAPES.keys())
def test_64_kib_of_the_worst_input_is_redacted_in_under_50_ms(head: str, unit: str) -> None:
    assert _best_seconds(_repeated(head, unit, MAX_STORED)) < 0.050
