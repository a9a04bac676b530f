"""Secrets as a host, git or an error message would print them, and output that must survive.

Every LEAKS entry is a line or block of remote output and the secret
substrings that must be gone after `redact_and_cap`; every KEEP entry must
come through unchanged (an operator needs digests, IDs, SHAs and names).
Token values are made up here from a seeded generator, in the vendor's shape,
so no real credential is in the source and no value can occur by chance.
`compose_log` and ADVERSARIAL are the inputs of the speed checks.
"""

from __future__ import annotations

import base64
import random
import string
from typing import NamedTuple

_ALNUM = string.ascii_letters + string.digits
_HEX = "0123456789abcdef"
_B64 = _ALNUM + "+/"
_URLSAFE = _ALNUM + "_-"


def fake(seed: str, n: int, alphabet: str = _ALNUM) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(n))


class Leak(NamedTuple):
    id: str
    text: str
    secrets: tuple[str, ...]


class Keep(NamedTuple):
    id: str
    text: str


def _leak(id: str, text: str, *secrets: str) -> Leak:
    assert secrets and all(s in text for s in secrets), id
    return Leak(id, text, secrets)


def pem_lines(seed: str, n: int = 4) -> list[str]:
    return [fake(f"{seed}{i}", 64, _B64) for i in range(n - 1)] + [fake(f"{seed}-last", 40, _B64) + "=="]


def pem_block(label: str, body: list[str], prefix: str = "", newline: str = "\n") -> str:
    lines = [f"-----BEGIN {label}-----", *body, f"-----END {label}-----"]
    return newline.join(prefix + line for line in lines)


# A few values used in more than one entry.
_JWT = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJkZXBsb3kiLCJpYXQiOjE3NjQyMzgwMDB9." + fake("jwt", 43, _URLSAFE)
_AKIA = "AKIA" + fake("akia", 16, string.ascii_uppercase + "234567")
_ASIA = "ASIA" + fake("asia", 16, string.ascii_uppercase + "234567")
_AWS_SECRET = fake("aws-secret", 40, _B64)
_AWS_SECRET2 = fake("aws-secret-2", 40, _B64)
_GLPAT = "glpat-" + fake("glpat", 20, _URLSAFE)
_GHS = "ghs_" + fake("ghs", 36)
_HEX40 = fake("oauth40", 40, _HEX)
_RSA = pem_lines("rsa")
_COMPOSE_PEM = pem_lines("compose-pem")
_TS_PEM = pem_lines("ts-pem")
_BOTH_PEM = pem_lines("both-pem")
_CUT_PEM = pem_lines("cut-pem")
_CUT_PREFIXED_PEM = pem_lines("cut-prefixed-pem")
_HEADLESS_PEM = pem_lines("headless-pem")
_FLAT_PEM = pem_lines("flat-pem", 3)
_JSON_PEM = pem_lines("json-pem")
_PGP = pem_lines("pgp")
_SSH2 = pem_lines("ssh2")
_PUTTY = pem_lines("putty")
_EC = pem_lines("ec", 3)
_YAML_PEM = pem_lines("yaml-pem")
_ENC_PEM = pem_lines("enc-pem")
_DOCKER_AUTH = base64.b64encode(b"bot:" + fake("docker-auth", 20).encode()).decode()
_BASIC = base64.b64encode(b"deploy:" + fake("basic", 16).encode()).decode()
_PROXY_BASIC = base64.b64encode(b"proxy:" + fake("proxy", 16).encode()).decode()
_TS = "2026-11-27T10:00:00.123456789Z "

LEAKS: list[Leak] = [
    # ---- env and config keys: any separator, the secret word anywhere ----
    _leak("env-stripe-key", f"STRIPE_KEY={(v := fake('stripe-key', 24))}", v),
    _leak("env-db-pass", f"DB_PASS={(v := fake('db-pass', 16))}", v),
    _leak("env-smtp-passwd", f"SMTP_PASSWD={(v := fake('smtp', 14))}", v),
    _leak("env-auth", f"AUTH={(v := fake('auth', 24))}", v),
    _leak("env-auth-token", f"AUTH_TOKEN={(v := fake('auth-token', 32))}", v),
    _leak("env-colon-no-space", f"DB_PASSWORD:{(v := fake('colon', 16))}", v),
    _leak("env-spaced-equals", f"JWT_SECRET = {(v := fake('jwt-secret', 32))}", v),
    _leak("env-export-quoted", f'export MAILGUN_API_KEY="{(v := fake("mailgun", 32))}"', v),
    _leak("env-single-quoted", f"ENCRYPTION_KEY='{(v := fake('enc-key', 32, _B64))}'", v),
    _leak("env-compose-prefix", f"api-1  | SECRET_KEY_BASE={(v := fake('skb', 64, _HEX))}", v),
    _leak("env-docker-run-e", f"docker run -e POSTGRES_PASSWORD={(v := fake('docker-e', 16))} postgres:16", v),
    _leak("env-kebab", f"db-pass: {(v := fake('kebab', 16))}", v),
    _leak("env-creds", f"REGISTRY_CREDS=bot:{(v := fake('creds', 20))}", v),
    _leak("yaml-compose-config", f"    environment:\n      MINIO_ROOT_PASSWORD: {(v := fake('minio', 20))}", v),
    _leak("yaml-quoted", f'      REDIS_PASS: "{(v := fake("redis-pass", 20))}"', v),
    _leak("yaml-camel-key", f"  masterKey: {(v := fake('master', 32))}", v),
    _leak("yaml-admin-pw", f"admin_pw: {(v := fake('admin-pw', 14))}", v),
    _leak("properties-dotted", f"spring.mail.pass = {(v := fake('mail', 14))}", v),
    _leak("properties-credentials", f"ldap.bind.credentials={(v := fake('ldap', 18))}", v),
    _leak(
        "logfmt",
        f'time=2026-11-27T10:00:00Z level=debug msg="connecting" db_pass={(v := fake("logfmt", 16))} host=db',
        v,
    ),
    # ---- JSON and Python reprs ----
    _leak("json-db-password", f'{{"db_password": "{(v := fake("json-db", 18))}"}}', v),
    _leak("json-numeric", '{"pin_password": 8406213, "user": "bob"}', "8406213"),
    _leak("json-escaped-quote", f'{{"password": "ab\\"{(v := fake("json-esc", 14))}", "n": 1}}', v),
    _leak("json-nested", f'{{"redis": {{"host": "cache", "password": "{(v := fake("nested", 18))}"}}}}', v),
    _leak(
        "json-escaped-in-string",
        'level=error msg="bad config" '
        f'payload="{{\\"user\\":\\"app\\",\\"password\\":\\"{(v := fake("esc-json", 18))}\\"}}"',
        v,
    ),
    _leak("json-docker-auth", f'{{"auths":{{"registry.example.com":{{"auth":"{_DOCKER_AUTH}"}}}}}}', _DOCKER_AUTH),
    _leak("json-header-map", f'{{"headers": {{"X-Api-Key": "{(v := fake("x-api", 32))}"}}}}', v),
    _leak(
        "python-repr",
        f"{{'client_secret': '{(v := fake('py-cs', 24))}', 'grant_type': 'client_credentials'}}",
        v,
    ),
    _leak(
        "json-oauth-response",
        f'{{"access_token":"{(v := fake("oauth-at", 40, _URLSAFE))}","token_type":"Bearer","expires_in":3599}}',
        v,
    ),
    # ---- credentials in URLs ----
    _leak("url-https-user-pass", f"https://deploy:{(v := fake('https-pw', 16))}@git.example.com/org/repo.git", v),
    _leak(
        "url-token-as-user",
        f"fatal: unable to access 'https://{_HEX40}@github.com/org/repo.git/': The requested URL returned error: 403",
        _HEX40,
    ),
    _leak("url-redis-no-user", f"redis://:{(v := fake('redis-url', 20))}@redis:6379/0", v),
    _leak("go-dsn", f"DATABASE_DSN=app:{(v := fake('go-dsn', 16))}@tcp(db:3306)/app?parseTime=true", v),
    _leak("toml-quoted-key", f'"db_password" = "{(v := fake("toml-key", 18))}"', v),
    # Coloured console output: a logger's key=value, jq -C.
    _leak(
        "ansi-logfmt", f"\x1b[36mINFO\x1b[0m[0000] connecting \x1b[36mpassword\x1b[0m={(v := fake('ansi-kv', 16))}", v
    ),
    _leak("ansi-jq", f'\x1b[1;34m"password"\x1b[0m:\x1b[0;32m"{(v := fake("ansi-jq", 16))}"\x1b[0m', v),
    _leak("url-postgres", f"postgres://u:{(v := fake('pg-url', 16))}@h/db", v),
    _leak("url-amqp", f"amqp://app:{(v := fake('amqp', 16))}@rabbitmq:5672/vhost", v),
    _leak(
        "url-git-oauth2",
        f"fatal: Authentication failed for 'https://oauth2:{_GLPAT}@gitlab.com/group/repo.git/'",
        _GLPAT[6:],
    ),
    _leak("url-x-access-token", f"git clone https://x-access-token:{_GHS}@github.com/org/repo.git", _GHS[4:]),
    _leak(
        "url-mongodb-srv",
        f"mongodb+srv://admin:{(v := fake('mongo', 16))}@cluster0.example.net/db?retryWrites=true",
        v,
    ),
    _leak("url-in-json", f'{{"url": "postgresql://app:{(v := fake("url-json", 16))}@db:5432/app"}}', v),
    # ---- private keys ----
    _leak("pem-rsa", pem_block("RSA PRIVATE KEY", _RSA), *_RSA),
    _leak("pem-compose-prefix", pem_block("PRIVATE KEY", _COMPOSE_PEM, "keys-1  | "), *_COMPOSE_PEM),
    _leak("pem-timestamp-prefix", pem_block("RSA PRIVATE KEY", _TS_PEM, _TS), *_TS_PEM),
    _leak("pem-compose-and-timestamp", pem_block("EC PRIVATE KEY", _BOTH_PEM, "api-1  | " + _TS), *_BOTH_PEM),
    _leak(
        "pem-cut-no-end",
        "\n".join(["-----BEGIN OPENSSH PRIVATE KEY-----", *_CUT_PEM[:3]]) + "\n[... output cut ...]",
        *_CUT_PEM[:3],
    ),
    _leak(
        "pem-prefixed-cut-no-end",
        "\n".join("worker-1  | " + line for line in ["-----BEGIN PRIVATE KEY-----", *_CUT_PREFIXED_PEM[:2]]),
        *_CUT_PREFIXED_PEM[:2],
    ),
    _leak(
        "pem-prefixed-no-begin",
        "\n".join("keys-1  | " + line for line in [*_HEADLESS_PEM[1:], "-----END RSA PRIVATE KEY-----"]),
        *_HEADLESS_PEM[1:],
    ),
    _leak(
        "pem-flattened-env",
        "SSH_KEY=-----BEGIN OPENSSH PRIVATE KEY----- "
        + " ".join(_FLAT_PEM)
        + " -----END OPENSSH PRIVATE KEY-----",
        *_FLAT_PEM,
    ),
    _leak("pem-json-escaped", '{"key": "' + pem_block("PRIVATE KEY", _JSON_PEM, newline="\\n") + '\\n"}', *_JSON_PEM),
    _leak(
        "pem-pgp",
        pem_block("PGP PRIVATE KEY BLOCK", ["Version: GnuPG v2", "", *_PGP[:-1], "=" + fake("pgp-crc", 4, _B64)]),
        *_PGP[:-1],
    ),
    _leak(
        "pem-ssh2",
        "\n".join(
            ["---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----", 'Comment: "deploy@ci"', *_SSH2]
            + ["---- END SSH2 ENCRYPTED PRIVATE KEY ----"]
        ),
        *_SSH2,
    ),
    _leak(
        "putty-ppk",
        "PuTTY-User-Key-File-2: ssh-rsa\nEncryption: none\nComment: deploy\nPublic-Lines: 1\n"
        + fake("putty-pub", 64, _B64)
        + "\nPrivate-Lines: 4\n"
        + "\n".join(_PUTTY)
        + "\nPrivate-MAC: "
        + fake("putty-mac", 40, _HEX),
        *_PUTTY,
    ),
    _leak("pem-ec-crlf", pem_block("EC PRIVATE KEY", _EC, newline="\r\n"), *_EC),
    _leak(
        "pem-yaml-indented",
        "ssh_key: |\n" + pem_block("OPENSSH PRIVATE KEY", _YAML_PEM, "  ") + "\nnext: 1",
        *_YAML_PEM,
    ),
    _leak(
        "pem-legacy-encrypted",
        pem_block(
            "RSA PRIVATE KEY",
            ["Proc-Type: 4,ENCRYPTED", f"DEK-Info: AES-128-CBC,{(v := fake('dek', 16, _HEX))}", "", *_ENC_PEM],
        ),
        v,
        *_ENC_PEM,
    ),
    # ---- vendor tokens (shapes from detect-secrets' plugins and gitleaks' rules) ----
    _leak("openai-project", f"OpenAI error for key {(v := 'sk-proj-' + fake('sk-proj', 156, _URLSAFE))}", v[8:]),
    _leak("openai-classic", f"using {(v := 'sk-' + fake('sk-classic', 20) + 'T3BlbkFJ' + fake('sk-c2', 20))}", v[3:]),
    _leak("anthropic", f"x-api-key {(v := 'sk-ant-api03-' + fake('ant', 93, _URLSAFE) + 'AA')} rejected", v[13:]),
    _leak("gitlab-pat", f"PRIVATE-TOKEN {_GLPAT} expired", _GLPAT[6:]),
    _leak("huggingface", f"huggingface_hub login with {(v := 'hf_' + fake('hf', 34, string.ascii_letters))}", v[3:]),
    _leak("slack-xoxb", f"slack: invalid_auth for {(v := 'xoxb-2456789012-2456789012345-' + fake('xoxb', 24))}", v[5:]),
    _leak("slack-xoxp", f"{(v := 'xoxp-2456789012-2456789012-2456789012345-' + fake('xoxp', 32, _HEX))}", v[5:]),
    _leak("slack-xoxa", f"token {(v := 'xoxa-2-' + fake('xoxa', 40))} revoked", v[5:]),
    _leak("slack-xoxs", f"legacy {(v := 'xoxs-' + fake('xoxs', 40, _HEX))}", v[5:]),
    _leak("npm", f"npm ERR! 401 for token {(v := 'npm_' + fake('npm', 36))}", v[4:]),
    _leak("google-api-key", f"maps: {(v := 'AIza' + fake('aiza', 35, _URLSAFE))} over quota", v[4:]),
    _leak("stripe-live", f"stripe {(v := 'sk_live_' + fake('sk-live', 99))}", v[8:]),
    _leak("stripe-restricted", f"{(v := 'rk_live_' + fake('rk-live', 24))} ok", v[8:]),
    _leak("stripe-test", f"{(v := 'sk_test_' + fake('sk-test', 24))}", v[8:]),
    _leak("stripe-webhook", f"verifying with {(v := 'whsec_' + fake('whsec', 32))}", v[6:]),
    _leak("github-ghp", f"remote: Invalid username or password {(v := 'ghp_' + fake('ghp', 36))}", v[4:]),
    _leak("github-gho", f"{(v := 'gho_' + fake('gho', 36))}", v[4:]),
    _leak("github-ghu", f"{(v := 'ghu_' + fake('ghu', 36))}", v[4:]),
    _leak("github-ghr", f"{(v := 'ghr_' + fake('ghr', 76))}", v[4:]),
    _leak("github-fine-grained", f"{(v := 'github_pat_' + fake('gpat', 22) + '_' + fake('gpat2', 59))}", v[11:]),
    _leak(
        "aws-credentials-csv",
        f"User name,Password,Access key ID,Secret access key\ndeploy,,{_AKIA},{_AWS_SECRET}",
        _AKIA[4:],
        _AWS_SECRET,
    ),
    _leak("aws-secret-before-id", f"s3: signature mismatch secret {_AWS_SECRET2} for {_ASIA}", _AWS_SECRET2, _ASIA[4:]),
    _leak(
        "slack-webhook",
        f"POST https://hooks.slack.com/services/T0{fake('slk-t', 8, string.ascii_uppercase)}"
        f"/B0{fake('slk-b', 8, string.ascii_uppercase)}/{(v := fake('slk-s', 24))} 404",
        v,
    ),
    _leak(
        "discord-webhook",
        f"https://discord.com/api/webhooks/1187654321098765432/{(v := fake('discord', 68, _URLSAFE))}",
        v,
    ),
    _leak("jwt", f"session {_JWT} expired", _JWT.split(".")[2]),
    _leak("digitalocean", f"doctl: {(v := 'dop_v1_' + fake('dop', 64, _HEX))}", v[7:]),
    _leak("sendgrid", f"{(v := 'SG.' + fake('sg1', 22, _URLSAFE) + '.' + fake('sg2', 43, _URLSAFE))}", v[3:]),
    _leak("twilio-api-key", f"twilio key {(v := 'SK' + fake('twilio', 32, _HEX))}", v[2:]),
    _leak("shopify", f"{(v := 'shpat_' + fake('shpat', 32, _HEX))}", v[6:]),
    _leak("pypi", f"twine: {(v := 'pypi-AgEIcHlwaS5vcmc' + fake('pypi', 70, _URLSAFE))}", v[5:]),
    _leak(
        "dockerhub-pat",
        f"docker login -u bot --password-stdin <<< {(v := 'dckr_pat_' + fake('dckr', 27, _URLSAFE))}",
        v[9:],
    ),
    _leak(
        "tailscale-authkey",
        f"tailscale up --authkey={(v := 'tskey-auth-' + fake('ts1', 12) + 'CNTRL-' + fake('ts2', 33))}",
        v[11:],
    ),
    _leak("vault", f"vault: {(v := 'hvs.' + fake('hvs', 95, _URLSAFE))}", v[4:]),
    _leak(
        "telegram",
        f"GET https://api.telegram.org/bot7234567890:{(v := 'AA' + fake('tg', 33, _URLSAFE))}/sendMessage 401",
        v,
    ),
    _leak("google-oauth-access", f"gcloud: {(v := 'ya29.' + fake('ya29', 120, _URLSAFE))}", v[5:]),
    _leak("google-oauth-client-secret", f"client {(v := 'GOCSPX-' + fake('gocspx', 28, _URLSAFE))}", v[7:]),
    _leak("age", f"{(v := 'AGE-SECRET-KEY-1' + fake('age', 58, string.ascii_uppercase + string.digits))}", v[16:]),
    _leak("mapbox-secret", f"mapbox {(v := 'sk.eyJ1IjoiZGVwbG95IiwiYSI6Im' + fake('mapbox', 40, _URLSAFE))}", v[3:]),
    _leak(
        "azure-ad-client-secret",
        f"AADSTS7000215 for secret {(v := fake('az1', 3) + '8Q~' + fake('az2', 34, _ALNUM + '_~.-'))}",
        v,
    ),
    _leak("grafana-sa", f"{(v := 'glsa_' + fake('glsa', 32) + '_' + fake('glsa2', 8, _HEX))}", v[5:]),
    _leak("sentry-user", f"sentry-cli: {(v := 'sntryu_' + fake('sntryu', 64, _HEX))}", v[7:]),
    _leak("linear", f"{(v := 'lin_api_' + fake('linear', 40))}", v[8:]),
    _leak("databricks", f"{(v := 'dapi' + fake('dapi', 32, _HEX))}", v[4:]),
    # ---- HTTP headers ----
    _leak("header-bearer", f"Authorization: Bearer {(v := fake('bearer', 40, _URLSAFE))}", v),
    _leak(
        "bearer-in-error",
        f"rpc error: code = Unauthenticated desc = invalid Bearer {(v := fake('grpc-bearer', 40, _URLSAFE))}",
        v,
    ),
    _leak("header-basic", f"Authorization: Basic {_BASIC}", _BASIC),
    _leak(
        "header-cookie",
        f"Cookie: sid={(v := fake('cookie1', 32))}; _gid=GA1.2.4455; remember_user={(w := fake('cookie2', 32))}",
        v,
        w,
    ),
    _leak("header-set-cookie", f"Set-Cookie: sessionid={(v := fake('set-cookie', 32))}; Path=/; HttpOnly", v),
    _leak("header-x-api-key", f"X-Api-Key: {(v := fake('xapikey', 32))}", v),
    _leak("header-proxy-authorization", f"Proxy-Authorization: Basic {_PROXY_BASIC}", _PROXY_BASIC),
    _leak(
        "header-curl-cookie",
        f"curl -sS -H 'Cookie: grafana_session={(v := fake('grafana', 32, _HEX))}' http://grafana:3000/api/health",
        v,
    ),
    # ---- command lines ----
    _leak("cli-mysql-p", f"mysql -h db -u root -p{(v := fake('mysql-p', 14))} app", v),
    _leak("cli-mysql-password", f"mysqldump --user=root --password={(v := fake('mysqldump', 14))} app", v),
    _leak("cli-redis-cli-a", f"redis-cli -h cache -a {(v := fake('redis-a', 20))} ping", v),
    _leak("cli-curl-u", f"curl -fsS -u admin:{(v := fake('curl-u', 16))} http://es:9200/_cluster/health", v),
    _leak("cli-sshpass", f"sshpass -p {(v := fake('sshpass', 14))} ssh deploy@rs2000", v),
    _leak("cli-docker-login-p", f"docker login -u bot -p {(v := fake('docker-p', 20))} registry.example.com", v),
    _leak("cli-token-space", f"vault login --token {(v := fake('vault-token', 26))} -method=token", v),
    _leak("cli-password-space", f"app migrate --password {(v := fake('cli-pw', 14))} --debug", v),
    _leak(
        "cli-healthcheck-json",
        f'"Test": ["CMD", "mysqladmin", "ping", "-h", "localhost", "-uroot", "-p{(v := fake("hc", 14))}"]',
        v,
    ),
    _leak("cli-openssl-passout", f"openssl pkcs12 -export -out k.p12 -passout pass:{(v := fake('p12', 14))}", v),
    # ---- connection strings, XML, netrc, query strings, SQL ----
    _leak("ado", f"Server=tcp:db,1433;User ID=sa;Password={(v := fake('ado', 16))};Encrypt=true;", v),
    _leak("odbc", f"Driver={{ODBC Driver 18 for SQL Server}};Server=db;UID=sa;PWD={(v := fake('odbc', 16))};", v),
    _leak("xml-password", f"<password>{(v := fake('xml-pw', 16))}</password>", v),
    _leak("xml-secret", f"  <secret>{(v := fake('xml-secret', 24))}</secret>", v),
    _leak("json-name-value", f'{{"name": "DB_PASSWORD", "value": "{(v := fake("name-value", 16))}"}}', v),
    _leak("dotnet-appsettings", f'<add key="DbPassword" value="{(v := fake("appsettings", 16))}" />', v),
    _leak("netrc-line", f"machine git.example.com login deploy password {(v := fake('netrc', 20))}", v),
    _leak("netrc-block", f"machine api.example.com\n  login bot\n  password {(v := fake('netrc2', 20))}", v),
    _leak(
        "azure-sas",
        "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&se=2026-12-01&sp=r"
        f"&sig={(v := fake('sas', 43, _B64))}%3D",
        v,
    ),
    _leak(
        "azure-connection-string",
        "DefaultEndpointsProtocol=https;AccountName=acct;"
        f"AccountKey={(v := fake('acctkey', 86, _B64))}==;EndpointSuffix=core.windows.net",
        v,
    ),
    _leak("query-token", f"GET /hook?token={(v := fake('q-token', 24))}&state=1 HTTP/1.1", v),
    _leak("query-access-token", f"GET /api?page=2&access_token={(v := fake('q-at', 32))} 200", v),
    _leak(
        "query-client-secret",
        f"POST https://login.example.com/oauth/token?client_id=app&client_secret={(v := fake('q-cs', 32))}",
        v,
    ),
    _leak("jdbc", f"jdbc:mysql://db:3306/app?user=app&password={(v := fake('jdbc', 16))}&useSSL=false", v),
    _leak(
        "sql-postgres-statement",
        "db-1  | 2026-11-27 10:00:00.000 UTC [62] STATEMENT:  "
        f"ALTER USER app WITH PASSWORD '{(v := fake('sql-pg', 16))}';",
        v,
    ),
    _leak("sql-mysql-identified-by", f"CREATE USER 'app'@'%' IDENTIFIED BY '{(v := fake('sql-my', 16))}';", v),
]

# Shapes real compose and servers print that pattern redaction does not reliably
# catch (the red-team list): nothing a host prints is stored, so none may reach
# a record; the redactor is not held to them.
HOST_ONLY: list[Leak] = [
    _leak("compose-interpolation", "invalid interpolation format for services.app.environment.DB_PASSWORD: "
          f'"{(v := "pw" + fake("interp", 12) + "${x")}". You may need to escape any $ with another $.', v[:14]),
    _leak("compose-env-template", f'failed to read /opt/platform/compose/core/.env: Invalid template: '
          f'"{(v := fake("tmpl", 14))}${{"', v),
    _leak("compose-unterminated", "failed to read .env: line 3: unterminated quoted value "
          f'"{(v := fake("unterm", 16))}', v),
    _leak("compose-dollar-rest", f'level=warning msg="The \\"{(v := fake("dollar", 12))}\\" variable is not set. '
          'Defaulting to a blank string."', v),
    _leak("server-requirepass", f"redis-server --requirepass {(v := fake('requirepass', 20))} --appendonly yes", v),
    _leak("url-pass-slash", f"redis://default:{(v := fake('slash', 8) + '/' + fake('slash2', 8))}@cache:6379/0", v),
    _leak("url-pass-at", f"amqp://app:{(v := fake('at1', 8) + '@' + fake('at2', 8))}@mq:5672/", v),
    _leak("passphrase-spaces", f"passphrase: {(v := 'correct horse ' + fake('horse', 10) + ' staple')}", v),
    _leak("go-header-map", f"map[Authorization:[{(v := fake('gomap', 24))}] Content-Type:[application/json]]", v),
    _leak("pgpass-line", f"db.internal:5432:app:app:{(v := fake('pgpass', 18))}", v),
    _leak("mysql-p", f"mysql -h db -u root -p{(v := fake('mysql-p', 14))} app", v),
    _leak("exec-array", f'"Cmd": ["app", "--db-password", "{(v := fake("exec", 16))}"]', v),
    _leak("key-next-line", f"Secret access key:\n{(v := fake('next-line', 40, _B64))}", v),
    _leak("escape-between", f"API_TOKEN\x1b(B={(v := fake('esc', 20))}", v),
]

# Output an operator needs verbatim: digests, IDs, SHAs, names, ordinary logs.
_DIGEST = fake("digest", 64, _HEX)
_IMAGE_ID = fake("image-id", 64, _HEX)
_SHORT_ID = fake("short-id", 12, _HEX)
_SHA = fake("sha", 40, _HEX)
_HOST_KEY = "AAAAC3NzaC1lZDI1NTE5AAAAI" + fake("host-key", 43, _B64)

KEEP: list[Keep] = [
    Keep("digest", f"registry.example.com/core/api@sha256:{_DIGEST}"),
    Keep("pull-digest", f"Digest: sha256:{_DIGEST}\nStatus: Downloaded newer image for redis:7-alpine"),
    Keep("image-id", f"{_IMAGE_ID}"),
    Keep("image-id-sha256", f'"Image": "sha256:{_IMAGE_ID}"'),
    Keep("short-id", f"{_SHORT_ID}   core-api-1   Up 2 hours (healthy)"),
    Keep("git-sha", f"HEAD is now at {_SHA[:7]} bump redis\ncommit {_SHA}"),
    Keep("git-sha-in-json", f'{{"source_sha": "{_SHA}", "pr": 42}}'),
    Keep(
        "compose-up",
        "[+] Running 4/4\n ✔ Network core_default        Created  0.1s\n"
        " ✔ Container core-token-api-1  Started  0.4s\n ✔ Container core-secret-store-1  Healthy  5.6s\n"
        " ✔ Container core-keycloak-1  Started  0.4s",
    ),
    Keep("compose-pull", "[+] Pulling 2/2\n ✔ token-api Pulled  3.1s\n ✔ redis Pulled  1.0s"),
    Keep(
        "compose-ps-json",
        f'{{"ID":"{_SHORT_ID}","Image":"registry.example.com/token-api@sha256:{_DIGEST}",'
        '"Name":"core-token-api-1","Service":"token-api","State":"running","Health":"healthy"}',
    ),
    Keep("compose-warning", 'WARN[0000] The "DB_PASSWORD" variable is not set. Defaulting to a blank string.'),
    Keep("redis-ready", "redis-1  | 1:M 27 Nov 2026 10:00:00.000 * Ready to accept connections tcp"),
    Keep(
        "postgres-ready",
        "db-1  | 2026-11-27 10:00:00.000 UTC [1] LOG:  database system is ready to accept connections",
    ),
    Keep("uvicorn", "api-1  | INFO:     Uvicorn running on http://0.0.0.0:8000 (Press CTRL+C to quit)"),
    Keep("exit-code", "core-worker-1 exited with code 0"),
    Keep("file-reference", "POSTGRES_PASSWORD_FILE: /run/secrets/db_password"),
    Keep("password-stdin", 'echo "$PW" | docker login --password-stdin -u bot registry.example.com'),
    Keep("key-path", "SSH_KEY_PATH=/home/deploy/.ssh/id_ed25519"),
    Keep("secrets-dir", "SECRETS_DIR=/run/secrets"),
    Keep("auth-url", "AUTH_URL=https://auth.example.com/realms/platform"),
    Keep("keycloak-env", "KEYCLOAK_ADMIN=admin\nBYPASS_CACHE=true"),
    Keep("secret-path", "open /run/secrets/db_password: no such file or directory"),
    Keep("image-and-port", "image: secret-store:1.2\nconnect to token-api:8080 refused"),
    Keep("host-key", f"rs2000 ssh-ed25519 {_HOST_KEY}"),
    Keep("security-key-host-key", f"rs2000 sk-ssh-ed25519@openssh.com {_HOST_KEY}"),
    Keep("ssh-errors", "Host key verification failed.\ndeploy@rs2000: Permission denied (publickey)."),
    Keep("timezone", "TZ=Asia/Tokyo"),
    Keep("uuid", "request_id=0b9f3c1e-6d2a-4f5b-9c8d-7e6f5a4b3c2d status=200"),
    Keep("url-without-credentials", "https://registry.example.com:5000/v2/ and ssh://deploy@rs2000:22"),
    Keep(
        "certificate",
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2VydGlmaWNhdGVzIGFyZSBwdWJsaWM=\n-----END CERTIFICATE-----",
    ),
    Keep("bearer-prose", "Bearer authentication failed"),
]


def compose_log(size: int) -> str:
    """`size` characters of ordinary `docker compose up`/`logs` output (no secret in it)."""
    lines = [
        " ✔ Container core-api-1  Started  0.4s",
        f"#12 sha256:{_DIGEST} 10.49MB / 10.49MB 0.3s done",
        "api-1     | 172.18.0.1 - - [27/Nov/2026:10:00:01 +0000] \"GET /health HTTP/1.1\" 200 2 \"-\" \"curl/8.5.0\"",
        "api-1     | 2026-11-27T10:00:01.123Z INFO  [http] GET /api/v1/items?page=2&sort=name 200 12ms",
        "db-1      | 2026-11-27 10:00:01.123 UTC [62] LOG:  checkpoint complete: wrote 3 buffers (0.0%)",
        "redis-1   | 1:M 27 Nov 2026 10:00:01.123 * Background saving terminated with success",
        'worker-1  | {"level":"info","ts":1764237601.123,"msg":"job done",'
        '"job_id":"0b9f3c1e-6d2a-4f5b-9c8d-7e6f5a4b3c2d","duration_ms":41}',
        f"worker-1  | pulled registry.example.com/core/worker@sha256:{_DIGEST} ({_SHORT_ID})",
        'WARN[0000] The "DB_PASSWORD" variable is not set. Defaulting to a blank string.',
        f"HEAD is now at {_SHA[:7]} bump redis to 7.2.4 (#42)",
    ]
    text = "\n".join(lines) + "\n"
    return (text * (size // len(text) + 1))[:size]


# Inputs that would blow up a backtracking pattern: a head, then repeats of
# what a key, token, command or PEM body is made of, with what would complete
# a match missing.
ADVERSARIAL: dict[str, tuple[str, str]] = {
    "one-long-word": ("", "a"),
    "secret-word-run": ("", "passwordtoken"),
    "secret-parts-run": ("", "db_pass_"),
    "dashed-run": ("", "a-"),
    "schemes-without-at": ("", "a://b:c"),
    "schemes-long-user-without-at": ("", "https://" + "u" * 20 + "/"),
    "jwt-starts": ("", "eyJ-"),
    "token-prefixes": ("", "ghp_sk-glpat-xoxb-"),
    "aws-ids-and-near-secrets": ("", "AKIAAAAAAAAAAAAAAAAA " + "A" * 39 + " "),
    "asia-and-base64": ("Asia/Tokyo ", "A" * 41 + " "),
    "base64-lines-no-end": ("private key\n", "A" * 64 + "\n"),
    "begin-lines": ("", "-----BEGIN PRIVATE KEY-----"),
    "begin-then-header-shapes": ("-----BEGIN PRIVATE KEY-----\n", "-A"),
    "begin-then-inline-words": ("-----BEGIN PRIVATE KEY----- ", "a "),
    "begin-then-blank-lines": ("-----BEGIN PRIVATE KEY-----", "\n"),
    "begin-then-log-prefixes": ("-----BEGIN PRIVATE KEY-----\n", "svc-1 | "),
    "begin-then-timestamps": ("-----BEGIN PRIVATE KEY-----\n", "2026-11-27T10:00:00Z "),
    "prefixed-lines-no-end": ("private key\n", "svc-1  | " + "A" * 64 + "\n"),
    "quotes-and-keys": ("", '"token'),
    "escaped-quotes-and-keys": ("", '\\"token\\":\\"'),
    "keys-without-values": ("", "token: "),
    "env-keys-without-values": ("", "DB_PASSWORD:"),
    "name-without-value": ("", 'name="token" '),
    "xml-open-tags": ("", "<password>x"),
    "flags-without-values": ("", "--token "),
    "docker-login-without-p": ("", "docker login "),
    "commands-without-option": ("", "mysql curl redis-cli sshpass -x "),
    "one-command-many-args": ("curl", " -H x"),
    "netrc-without-password": ("", "machine h login u "),
    "cookie-headers": ("", "Cookie: "),
    "unclosed-quote-backslashes": ("", 'password="\\'),
    "spaces-after-equals": ("", "token=" + " " * 100),
    # Terminal controls: introducers with no end (one scan each would be quadratic), and
    # a megabyte of characters to write out.
    "osc-c1-introducers": ("", "\x9d"),
    "osc-introducers-with-text": ("", "\x1b]a"),
    "csi-introducers": ("", "\x1b[0;"),
    "nul-and-cr": ("", "\x00\r"),
}
