"""Hide secret values in free text before it is stored, logged or returned.

`redact` runs on every free-text field (a pydantic AfterValidator), so each
pattern is precompiled and built to run in linear time: runs that could be
long are possessive (`*+`, `++`), so a failed match never re-scans them; a
pattern that starts with a run has a lookbehind so it is only tried where that
run begins; one that starts with a word checks what precedes the word after
the word's first letter (`_word`), so that re scans for that letter quickly.

Each pattern marks the secret with the named group `v`; only that group is
replaced by REDACTED, so the key or label around it stays visible
(`password=[REDACTED]`, `Authorization: Bearer [REDACTED]`). A match in which
`v` took no part is left unchanged. A redacted value never matches again the
way it did before, so `redact(redact(x)) == redact(x)`.

Vendor token shapes (prefixes, alphabets, lengths) follow the plugins of
Yelp's detect-secrets (Apache-2.0) and the default rules of gitleaks (MIT);
tests/secret_corpus.py holds an example of each kind of leak.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_STORED = 64 * 1024
REDACTED = "[REDACTED]"

_TRUNCATED = "[... {} chars truncated ...]\n"


class _Pattern(NamedTuple):
    name: str
    # Lowercase strings of which any match must contain one: the regex is
    # skipped when none is in the text (most output holds no secret at all).
    needles: tuple[str, ...]
    regex: re.Pattern[str]


# ---- building blocks --------------------------------------------------------

# Words that make a key's value secret wherever they are in the key
# (DB_PASSWORD, PGPASSWORD, client_secret, SLACK_BOT_TOKEN, X-Api-Key).
_SECRET_WORD = (
    r"(?:password|passwd|passphrase|pwd|secret|token|credential"
    r"|api[_-]?key|private[_-]?key|access[_-]?key)"
)
# Short words that do so only as a whole part of the key, between separators
# or as a camelCase word (DB_PASS, db.pw, REDIS_AUTH, AUTH, masterKey), so
# BYPASS_CACHE, KEYCLOAK_ADMIN or monkey stay. `key` needs a part before it:
# a key named just "key" (cache keys, label keys, <add key=...>) is a name.
_SECRET_PART = (
    r"(?:(?<![A-Za-z0-9])(?:pass|pw|auth|creds|cookie)(?![A-Za-z0-9])"
    r"|(?<=[A-Za-z0-9][_.-])key(?![A-Za-z0-9])"
    r"|(?-i:(?<=[a-z0-9])(?:Pass|Pw|Auth|Creds|Cookie|Key)(?![a-z])))"
)
# Keys that name where a secret is or how it is used, not the secret
# (POSTGRES_PASSWORD_FILE, --password-stdin, SSH_KEY_PATH, SECRETS_DIR, AUTH_URL).
_NOT_SECRET_SUFFIXES = ("file", "stdin", "path", "dir", "url")
# A key holding a secret word or part and no such suffix. The class before
# the words holds their first letters (keep it in step with them): a cheap
# test before trying them all.
# This scan is the costly part of the key patterns, so those that could start
# at any word of a log first check that a separator follows the word.
_KEY = (
    rf"(?=[\w.-]*?(?=[pstcak])(?:{_SECRET_WORD}|{_SECRET_PART}))[\w.-]++"
    + "".join(rf"(?<![_.-]{suffix})" for suffix in _NOT_SECRET_SUFFIXES)
)
# Lowercase needles for the key patterns: every secret word and part has one.
_SECRET_NEEDLES = ("pass", "pw", "secret", "token", "cred", "key", "auth", "cookie")

# A quote, or one escaped as in JSON inside a JSON string (\"password\":\"x\").
_QUOTE = r"\\?[\"']"
# The inside of a quote opened by group `q`: up to the closing quote, or to the
# end of the line when it is never closed (a cut-off value is still hidden).
_IN_QUOTES = r"(?:(?!(?P=q))(?:[^\\\r\n]|\\.))++"
_QUOTED_VALUE = rf"(?P<q>{_QUOTE})(?P<v>{_IN_QUOTES})"


def _value(bare: str) -> str:
    """A quoted value (the secret is its inside) or a bare one matching `bare`."""
    return rf"(?P<q>{_QUOTE})?(?P<v>(?(q){_IN_QUOTES}|{bare}))"


_PEM_LABEL = r"(?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?"
_PEM_BEGIN = rf"(?:-----BEGIN {_PEM_LABEL}-----|---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----)"
# What a log puts before each line it prints: docker compose's "svc-1  | ",
# an RFC 3339 timestamp (compose logs -t, journald), or both.
_LOG_PREFIX = (
    r"(?:[\w.-]++[ \t]*+\|[ \t]?+"
    r"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d++)?+(?:Z|[+-]\d\d:?\d\d)?+[ \t]++)"
)
# A line break in a PEM block, real or JSON-escaped (\n, \r\n), then the log
# prefix of the next line; blank lines too.
_PEM_NEWLINE = r"(?:\r?\n|(?:\\r)?\\n)"
_PEM_LINE_GAP = rf"(?:[ \t]*+{_PEM_NEWLINE}(?:{_LOG_PREFIX})*+[ \t]*+)++"
# A piece of PEM body: an armor header (Proc-Type:, DEK-Info:, Comment: ...;
# tried first, as base64 would take its name and stop at the colon), base64
# (with JSON's escaped \/), or an earlier redaction.
_PEM_CHUNK = (
    r"(?:(?:Proc-Type|DEK-Info|Comment|Subject|Version|Hash|Charset|x-[\w-]++):[^\r\n\\]*+"
    r"|(?:[A-Za-z0-9+/=]|\\/)++|\[REDACTED\])"
)
# A piece on a line of its own fills that line, so the log lines after a key
# cut short (no END) stay; pieces on one line are the key flattened
# (KEY=-----BEGIN ... ----- MIIE... -----END ...).
_PEM_PIECE_ON_ITS_LINE = rf"{_PEM_CHUNK}(?=[ \t]*+(?:{_PEM_NEWLINE}|[\"']|\Z))"
_PEM_BODY = (
    rf"(?:(?<=[ \t]){_PEM_CHUNK}|{_PEM_PIECE_ON_ITS_LINE})"
    rf"(?:[ \t]++{_PEM_CHUNK}|{_PEM_LINE_GAP}{_PEM_PIECE_ON_ITS_LINE})*+"
)
_B64_LINE = rf"(?:{_LOG_PREFIX})*+[ \t]*+[A-Za-z0-9+/=]++[ \t]*+\r?$"
_B64_LINES = rf"{_B64_LINE}(?:\n{_B64_LINE})*+"


def _word(literal: str, not_after: str = r"[\w-]") -> str:
    """`literal` where no `not_after` character comes before it.

    The check comes after the first character, so that re scans fast for that
    character instead of trying a lookbehind at every position of the text; a
    case-sensitive class of its two cases keeps that working under re.I.
    """
    first = literal[0]
    head = f"(?-i:[{first.lower()}{first.upper()}])" if first.isalpha() else re.escape(first)
    return rf"{head}(?<!{not_after}.){re.escape(literal[1:])}"


# Arguments of a command line as typed (cmd -o x) or in an exec array, as
# compose prints a healthcheck (["CMD", "mysqladmin", "-px"]).
_ARG_GAP = r"(?:[ \t]++|[\"'],[ \t]*+[\"'])"
# An unquoted argument: up to a space, a quote, the , of an exec array or a shell operator.
_ARG_VALUE = r"[^\s\"',;&|]++"


def _command_option(command: str, option: str, value: str) -> str:
    """`value` after `option` among the arguments of `command`.

    The command is a word of its own (not mysql in jdbc:mysql://). Arguments
    that start another `command` end the scan, so each argument is read by one
    scan only (linear in a line of many commands).
    """
    return (
        rf"{command}(?=[\s\"'])\S*+"
        rf"(?:[ \t]++(?![\"']?(?:{option}|{command}))\S++)*+"
        rf"[ \t]++[\"']?{option}{value}"
    )


# Vendor tokens with a fixed prefix, which stays as the label. Each prefix
# comes with the lowercase needles that its matches contain.
# These bodies are letters and digits only: the same prefixes start
# identifiers (npm_config_cache, hf_transfer) that an underscore ends.
_ALNUM_TOKENS = {
    r"gh[pousr]_": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),  # GitHub
    r"[rs]k_(?:live|test|prod)_": ("k_live_", "k_test_", "k_prod_"),  # Stripe
    r"whsec_": ("whsec_",),  # Stripe webhook signing
    r"sk-": ("sk-",),  # OpenAI, classic (sk-ssh-ed25519@openssh.com is a key type)
    r"hf_": ("hf_",),  # Hugging Face
    r"npm_": ("npm_",),
    r"shp(?:at|ca|pa|ss)_": ("shpat_", "shpca_", "shppa_", "shpss_"),  # Shopify
    r"do[opr]_v1_": ("_v1_",),  # DigitalOcean
    r"lin_api_": ("lin_api_",),  # Linear
    r"sntryu_": ("sntryu_",),  # Sentry
    r"pnu_": ("pnu_",),  # Prefect
    r"gsk_": ("gsk_",),  # Groq
    r"pplx-": ("pplx-",),  # Perplexity
    r"xai-": ("xai-",),  # xAI
    r"sbp_": ("sbp_",),  # Supabase
    r"pul-(?=[0-9a-f]{40})": ("pul-",),  # Pulumi
    r"dapi(?=[0-9a-f]{32})": ("dapi",),  # Databricks
    r"SK(?=[0-9a-f]{32}(?![A-Za-z0-9]))": ("sk",),  # Twilio API key
}
# These bodies may hold - _ and . (SendGrid's SG.x.y, Vault's hvs.x).
_URLSAFE_TOKENS = {
    r"sk-(?:proj|svcacct|admin|None)-": ("sk-",),  # OpenAI
    r"sk-ant-[a-z]++\d*+-": ("sk-ant-",),  # Anthropic
    r"gl(?:pat|dt|rt|ptt|cbt|ft|soat|oas)-": ("gl",),  # GitLab
    r"xox[abeoprs]-": ("xox",),  # Slack
    r"xapp-": ("xapp-",),  # Slack app-level
    r"github_pat_": ("github_pat_",),  # GitHub fine-grained
    r"dckr_pat_": ("dckr_pat_",),  # Docker Hub
    r"tskey-[a-z]++-": ("tskey-",),  # Tailscale
    r"hv[sbr]\.": ("hvs.", "hvb.", "hvr."),  # HashiCorp Vault
    r"AIza": ("aiza",),  # Google API key
    r"GOCSPX-": ("gocspx-",),  # Google OAuth client secret
    r"ya29\.": ("ya29.",),  # Google OAuth access token
    r"gl(?:sa|c)_": ("glsa_", "glc_"),  # Grafana
    r"AGE-SECRET-KEY-1": ("age-secret-key-1",),  # age
    r"pypi-AgE": ("pypi-age",),  # PyPI
    r"SG\.(?=[\w-]{16,}+\.)": ("sg.",),  # SendGrid
    r"sk\.eyJ": ("sk.eyj",),  # Mapbox secret
    r"dp\.(?:pt|st|ct|sa|scim|audit)\.": ("dp.",),  # Doppler
    r"PMAK-": ("pmak-",),  # Postman
    r"NRAK-": ("nrak-",),  # New Relic
    r"HRKU-": ("hrku-",),  # Heroku
    r"ATATT3": ("atatt3",),  # Atlassian
    r"xkeysib-": ("xkeysib-",),  # Brevo (Sendinblue)
    r"sq0(?:atp|csp)-": ("sq0",),  # Square
    r"lsv2_(?:pt|sk)_": ("lsv2_",),  # LangSmith
    r"fo1_": ("fo1_",),  # Fly.io
}
# An AWS access key id, and a secret access key (a word of 40 base64
# characters, never a lowercase-hex git SHA) at most 8 words from one on the
# same line. Word by word, so each id or secret tries a few places only.
_AWS_KEY_ID_PREFIX = r"A(?<![A-Z0-9]A)(?:KIA|SIA|BIA|CCA)"  # literal first: see _word
_AWS_KEY_ID = rf"{_AWS_KEY_ID_PREFIX}[A-Z0-9]{{16}}(?![A-Z0-9])"
_AWS_SECRET = r"(?<![A-Za-z0-9/+])(?P<v>(?![0-9a-f]{40})[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
_AWS_NEAR = r"(?:[^A-Za-z0-9/+\r\n]++[A-Za-z0-9/+]++){0,8}?[^A-Za-z0-9/+\r\n]++"


# An HTTP authentication scheme before the credential: letters and hyphens, at
# most 15 (Bearer, Basic, token, SharedKey, Zoho-oauthtoken), or a registered
# one with digits. Any other first word is the credential itself.
_AUTH_SCHEME = r"(?:aws4-hmac-sha256|scram-sha-(?:1|256)|[A-Za-z][A-Za-z-]{0,14}+)(?=[ \t])"

# The :// after a URL scheme (postgres, redis, https, mongodb+srv...).
_SCHEME_END = r"://(?<=[A-Za-z0-9+.-]://)"


# ---- the patterns, applied in order ---------------------------------------


def _pattern(name: str, needles: tuple[str, ...], regex: str, flags: int = 0) -> _Pattern:
    # ASCII: keys and token alphabets are ASCII, and the needle check relies on it.
    return _Pattern(name, needles, re.compile(regex, re.ASCII | flags))


def _prefixed_tokens(name: str, shapes: dict[str, tuple[str, ...]], body: str) -> _Pattern:
    needles = tuple(needle for group in shapes.values() for needle in group)
    return _pattern(name, needles, rf"(?<![\w-])(?:{'|'.join(shapes)})(?P<v>{body})")


_PATTERNS: tuple[_Pattern, ...] = (
    # A whole private key: the body goes, BEGIN/END stay; with no END line
    # (output cut short) everything key-shaped after BEGIN goes. First, so a
    # key rule cannot take BEGIN as a value (SSH_KEY=-----BEGIN ...).
    _pattern(
        "pem_private_key",
        ("private key",),
        rf"{_PEM_BEGIN}(?:[ \t]++|{_PEM_LINE_GAP})(?P<v>{_PEM_BODY})",
    ),
    # A key whose BEGIN line was cut off (log tail): base64 lines right above an
    # END line. The second branch consumes runs not followed by END, so each
    # run is scanned once (linear) and is left unchanged. The lookahead passes
    # over a line that cannot start one (a blank line) at once.
    _pattern(
        "pem_private_key_headless",
        ("private key",),
        rf"^(?=[\w \t+/=])(?:(?P<v>{_B64_LINES})(?=\n(?:{_LOG_PREFIX})*+[ \t]*+-----END {_PEM_LABEL}-----)"
        rf"|{_B64_LINES})",
        re.M,
    ),
    # A PuTTY .ppk key: its private half is the base64 under Private-Lines.
    _pattern(
        "putty_private_key",
        ("private-lines:",),
        rf"Private-Lines:[ \t]*+\d++[ \t]*+\r?\n(?P<v>{_B64_LINES})",
        re.M,
    ),
    # scheme://user:pass@host (postgres, redis, https, mongodb+srv...): keep the user.
    _pattern(
        "url_credentials",
        ("://",),
        rf"{_SCHEME_END}[^\s:/@]*+:(?P<v>[^\s@/]++)@",
    ),
    # Go's database/sql DSNs: user:pass@tcp(db:3306)/app (no scheme).
    _pattern(
        "go_dsn",
        ("@tcp(", "@unix(", "@udp("),
        r"(?<![\w.:/-])[\w.-]++:(?P<v>[^\s:/@]++)@(?:tcp|unix|udp)\(",
    ),
    # scheme://TOKEN@host: a user long enough to be a token (git over https
    # with a token, Sentry DSNs); ssh://deploy@host stays.
    _pattern(
        "url_token_user",
        ("://",),
        rf"{_SCHEME_END}(?P<v>[\w.~%+-]{{16,}}+)@",
    ),
    _prefixed_tokens("alnum_token", _ALNUM_TOKENS, r"[A-Za-z0-9]{20,}+"),
    _prefixed_tokens("urlsafe_token", _URLSAFE_TOKENS, r"[\w.-]{20,}+"),
    # Before the key id rule below: these find the secret by the id beside it.
    _pattern("aws_secret_after_key_id", ("akia", "asia", "abia", "acca"), _AWS_KEY_ID + _AWS_NEAR + _AWS_SECRET),
    _pattern(
        "aws_secret_before_key_id",
        ("akia", "asia", "abia", "acca"),
        rf"{_AWS_SECRET}(?={_AWS_NEAR}{_AWS_KEY_ID})",
    ),
    # AWS access key ids; the AKIA/ASIA prefix stays as the label.
    _pattern(
        "aws_access_key_id",
        ("akia", "asia", "abia", "acca"),
        rf"{_AWS_KEY_ID_PREFIX}(?P<v>[A-Z0-9]{{16}})(?![A-Z0-9])",
    ),
    # JSON Web Tokens (header.payload.signature, both JSON parts start eyJ).
    _pattern(
        "jwt",
        ("eyj",),
        rf"(?P<v>{_word('eyJ')}[A-Za-z0-9_-]*+\.eyJ[A-Za-z0-9_-]*+\.[A-Za-z0-9_-]*+)",
    ),
    # Webhook URLs whose path is the credential; the team/channel ids go too.
    _pattern(
        "slack_webhook",
        ("hooks.slack.com",),
        r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<v>[\w/+-]{20,}+)",
    ),
    _pattern("discord_webhook", ("/api/webhooks/",), r"/api/webhooks/\d++/(?P<v>[\w-]{20,}+)"),
    # Telegram bot tokens (<bot id>:AA...), bare or in the API URL (/bot<id>:...).
    _pattern("telegram_bot_token", (":aa",), r":(?<=\d{8}:)(?P<v>AA[\w-]{33})(?![\w-])"),
    # Azure AD (Entra) client secrets: 3 characters, a digit, Q~, 31-34 more.
    _pattern(
        "azure_client_secret",
        ("q~",),
        r"(?<![\w~.-])(?P<v>[\w~.]{3}\dQ~[\w~.-]{31,34})(?![\w~.-])",
    ),
    # Authorization / Proxy-Authorization headers, any scheme (Bearer, Basic,
    # token); the scheme stays as the label. (Taking any first word for the
    # scheme let "Authorization: <token> ok" keep the token and hide "ok";
    # found by tests/policy/test_properties.py.)
    _pattern(
        "authorization_header",
        ("authorization",),
        _word("authorization", not_after=r"\w")
        + rf"[\"']?[ \t]*+[:=][ \t]*+[\"']?(?:{_AUTH_SCHEME}[ \t]++)?(?P<v>[^\s\"',;]++)",
        re.I,
    ),
    # A bearer token outside a header (curl -H lines, error messages). 16+ chars
    # so prose such as "Bearer authentication" is left alone.
    _pattern("bearer_token", ("bearer",), _word("bearer") + r"[ \t]++(?P<v>[A-Za-z0-9._~+/-]{16,}+=*+)", re.I),
    # Cookie and Set-Cookie headers: every cookie in them (a=b; c=d) goes.
    _pattern(
        "cookie_header",
        ("cookie",),
        rf"(?:{_word('set-cookie')}|{_word('cookie')})[ \t]*+:[ \t]*+(?P<v>[^\s\"'][^\r\n\"']*+)",
        re.I,
    ),
    # JSON / Python-dict pairs: "client_secret": "...", "pin": 1234, also as
    # escaped JSON inside a string (\"password\":\"x\"), and quoted keys with =
    # (TOML, HCL: "db_password" = "x"). A quoted key takes only a quoted value
    # or a number, so structure ("secrets": {) and prose ("token-api": x) stay.
    _pattern(
        "json_pair",
        _SECRET_NEEDLES,
        rf"(?P<kq>\\[\"']|\"|')(?=[\w.-]++(?P=kq)[ \t]*+[:=]){_KEY}(?P=kq)[ \t]*+[:=][ \t]*+"
        + _value(r"-?[0-9][0-9.]*+"),
        re.I,
    ),
    # A secret named by a name/key field: {"name": "DB_PASSWORD", "value": "x"},
    # <add key="DbPassword" value="x" />.
    _pattern(
        "named_value",
        ("value",),
        rf"(?:{_word('name')}|{_word('key')})[\"']?[ \t]*+[:=][ \t]*+(?P<kq>[\"']){_KEY}(?P=kq)[ \t]*+,?[ \t]*+"
        rf"[\"']?value[\"']?[ \t]*+[:=][ \t]*+{_QUOTED_VALUE}",
        re.I,
    ),
    # <password>x</password>, <secret>x</secret>, <DbPassword>x</DbPassword>.
    _pattern(
        "xml_element",
        _SECRET_NEEDLES,
        rf"<(?P<tag>{_KEY})(?:\s[^<>]*+)?+>(?P<v>[^<]++)</(?P=tag)>",
        re.I,
    ),
    # key=value, key = value, KEY="value", key: value (env files, YAML, logs,
    # query strings, --flag=value). The colon form needs a space or quote after
    # it (so image:tag and host:port stay), except after an upper-case env name
    # (DB_PASSWORD:x; image names are lower case), and never takes a YAML/JSON
    # { or [. Not after / so a path such as /run/secrets/db_password: stays.
    _pattern(
        "key_value",
        _SECRET_NEEDLES,
        r"(?<![\w./-])(?=[\w.-]++[ \t]*+[=:])(?:(?P<env>)(?-i:(?=[A-Z][A-Z0-9_]*+:)))?"
        + _KEY
        + r"[ \t]*+(?:=[ \t]*+|:(?:[ \t]++|(?=[\"'])|(?(env)(?=\S)|(?!)))(?![\[{]))"
        + _value(r"[^\s\"',;&]++"),
        re.I,
    ),
    # --password x, --token "x", --api-key x, --client-secret x (space form).
    _pattern(
        "cli_flag",
        _SECRET_NEEDLES,
        _word("--") + rf"{_KEY}[ \t]++" + _value(r"(?!-)[^\s\"';&|]++"),
        re.I,
    ),
    # openssl -passin pass:x / -passout pass:x. Before the command patterns
    # below: their scan runs on past a pipe (mysqldump ... | openssl enc -pass
    # pass:x), takes openssl's -pass for mysql's or sshpass's -p with the
    # value "ass", and the label left (-p[REDACTED] pass:x) no longer matches
    # here, so x stayed (found by tests/policy/test_properties.py).
    _pattern("openssl_pass", ("pass:",), _word("-pass") + r"(?:in|out)?[ \t]++[\"']?pass:(?P<v>[^\s\"']++)"),
    # docker login -u user -p pass (-p alone is too ambiguous elsewhere).
    _pattern(
        "docker_login_p",
        ("login",),
        _command_option(_word("docker") + r"[ \t]++login", rf"-p(?:{_ARG_GAP}|=)", _value(r"[^\s\"';&|]++")),
    ),
    # mysql -pSECRET, -p'SECRET' (attached: `-p db` prompts and names a
    # database; "-p", in an exec array prompts too).
    _pattern(
        "mysql_p",
        ("mysql", "mariadb"),
        _command_option(
            rf"(?:{_word('mysql')}|{_word('mariadb')})[\w-]*+",
            r"-p(?=[^\s\"',]|[\"'](?!,))",
            _value(_ARG_VALUE),
        ),
    ),
    _pattern("redis_cli_a", ("redis-cli",), _command_option(_word("redis-cli"), rf"-a{_ARG_GAP}", _value(_ARG_VALUE))),
    _pattern("sshpass_p", ("sshpass",), _command_option(_word("sshpass"), rf"-p{_ARG_GAP}?", _value(_ARG_VALUE))),
    # curl -u user:pass, --user user:pass: keep the user.
    _pattern(
        "curl_user",
        ("curl",),
        _command_option(
            _word("curl"),
            rf"(?:-u|--user(?![\w-]))(?:{_ARG_GAP}|=)?",
            r"[\"']?[^\s:\"']*+:(?P<v>[^\s\"']++)",
        ),
    ),
    # netrc: machine h login u password p, on one line or several.
    _pattern(
        "netrc",
        ("machine", "login"),
        rf"(?:{_word('machine')}|{_word('login')})\s++\S++\s++password\s++(?P<v>\S++)",
    ),
    # SQL: ALTER USER ... WITH PASSWORD 'x', CREATE USER ... IDENTIFIED BY 'x'.
    _pattern(
        "sql_password",
        ("password", "identified"),
        rf"(?:{_word('password')}|{_word('identified')}[ \t]++by)[ \t]++{_QUOTED_VALUE}",
        re.I,
    ),
    # Signed-URL signatures (?sig=, &X-Amz-Signature=): no secret word in the key.
    _pattern(
        "query_signature",
        ("sig",),
        r"[?&](?:sig|signature|x-amz-signature|x-goog-signature)=(?P<v>[^&\s#\"']++)",
        re.I,
    ),
)


def _hide(match: re.Match[str]) -> str:
    if match.start("v") < 0:
        return match[0]
    start = match.start()
    return match[0][: match.start("v") - start] + REDACTED + match[0][match.end("v") - start :]


# A terminal's escape sequences: CSI (colours, cursor moves, line erases) and OSC
# (window title, clipboard, hyperlinks), C1 introducers included.
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*+[ -/]*+[@-~]"  # CSI: parameters, intermediates, a final byte
    # OSC, to BEL or ST; its text stops at the next introducer too, so a run of them
    # (a megabyte of \x9d) is one scan, not one scan each.
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c\x9d]*+(?:\x07|\x1b\\|\x9c)"
)
# What is left that a terminal or a reader would not show as itself: C0 and C1
# controls but tab, newline and CRLF (a lone carriage return rewrites a line),
# DEL, and the bidirectional overrides that reorder what is shown. A table, not
# a regex callback: a megabyte of them is written out in C.
_WRITTEN_OUT = {
    c: chr(c).encode("unicode_escape").decode("ascii")
    for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0),
              0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}  # fmt: skip
_LONE_CR = re.compile(r"\r(?!\n)")


def _written_out(text: str) -> str:
    text = text.translate(_WRITTEN_OUT)
    return _LONE_CR.sub(r"\\r", text) if "\r" in text else text


def plain(text: str) -> str:
    """`text` as plain text: escape sequences dropped, other controls written out
    (\\x1b, \\u202e), so what a host printed cannot restyle or rewrite what an
    operator's terminal shows around it."""
    return _written_out(_ESCAPE_SEQUENCE.sub("", text))


def redact(text: str) -> str:
    """`text` as plain text, with every secret value replaced by REDACTED, labels kept.

    The patterns run before escape sequences are dropped and again after: a
    colour code between a key and its value (`\\x1b[36mpassword\\x1b[0m=x`, as
    console loggers and `jq -C` print) hides the pair until it is dropped, and
    a sequence can end on a key's first letter (`\\x9b A`: `\\x9b Authorization:
    Basic x` drops to `uthorization: Basic x`). Other controls are written out
    last: `\\x1b` before a key would read as part of it."""
    if _ESCAPE_SEQUENCE.search(text):
        text = _ESCAPE_SEQUENCE.sub("", _LINE_WITH_ESCAPES.sub(_hide_values_in_line, text))
    return _written_out(_hide_values(text))


# Only the lines that hold an introducer get the first pass: a key and its value
# share a line, and the rest of the text (most of a log) is scanned once.
_LINE_WITH_ESCAPES = re.compile(r"^[^\n]*[\x1b\x9b\x9d][^\n]*", re.M)


def _hide_values_in_line(match: re.Match[str]) -> str:
    return _hide_values(match[0])


def _hide_values(text: str) -> str:
    # Needles are looked for in the input once: a REDACTED never adds one.
    lowered = text.lower()
    for pattern in _PATTERNS:
        if any(needle in lowered for needle in pattern.needles):
            text = pattern.regex.sub(_hide, text)
    return text


def redact_and_cap(text: str, limit: int = MAX_STORED) -> str:
    """Redact, then keep the last `limit` characters (the tail holds the error).

    Redacting the whole text first means a secret the cut runs through is
    already gone, and whatever line the cut runs through is dropped whole, so
    the kept tail starts at a line (unless its last line alone is too long).
    When it cuts, a marker saying how much was cut leads, and the result,
    marker included, is at most `limit` long, so capping again changes nothing.
    """
    text = redact(text)
    if len(text) <= limit:
        return text
    # The count in the marker is below len(text), so this size is never short.
    room = limit - len(_TRUNCATED.format(len(text)))
    if room <= 0:  # no room for the marker: the bare tail
        return text[len(text) - limit :]
    cut = len(text) - room
    if text[cut - 1] != "\n":
        line_end = text.find("\n", cut, len(text) - 1)
        if line_end >= 0:
            cut = line_end + 1
    return _TRUNCATED.format(cut) + text[cut:]
