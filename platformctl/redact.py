"""Hide secret values in free text before it is stored, logged or returned.

`redact` runs on every free-text field (a pydantic AfterValidator), so each
pattern is precompiled and built to run in linear time: runs that could be
long are possessive (`*+`, `++`), so a failed match never re-scans them, and a
pattern that starts with a run has a lookbehind so it is only tried where that
run begins.

Each pattern marks the secret with the named group `v`; only that group is
replaced by REDACTED, so the key or label around it stays visible
(`password=[REDACTED]`, `Authorization: Bearer [REDACTED]`). A match in which
`v` took no part is left unchanged. A redacted value never matches again the
way it did before, so `redact(redact(x)) == redact(x)`.
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

# Words that make a key's value secret; a key may have anything around them
# (DB_PASSWORD, client_secret, SLACK_BOT_TOKEN, aws_secret_access_key, X-Api-Key).
_SECRET_WORD = (
    r"(?:password|passwd|passphrase|pwd|secret|token|credential"
    r"|api[_-]?key|private[_-]?key|access[_-]?key)"
)
# A key holding a secret word. Keys ending in _file/-file or -stdin name where
# the secret is (POSTGRES_PASSWORD_FILE, --password-stdin), not the secret.
_KEY = rf"(?=[\w.-]*?{_SECRET_WORD})[\w.-]++(?<![_-]file)(?<![_-]stdin)"
# The inside of a quote opened by group `q`: up to the closing quote, or to the
# end of the line when it is never closed (a cut-off value is still hidden).
_IN_QUOTES = r"(?:(?!(?P=q))[^\\\r\n]|\\.)++"
_QUOTED_VALUE = rf"(?P<q>[\"'])(?P<v>{_IN_QUOTES})"


def _value(bare: str) -> str:
    """A quoted value (the secret is its inside) or a bare one matching `bare`."""
    return rf"(?P<q>[\"'])?(?P<v>(?(q){_IN_QUOTES}|{bare}))"


_PEM_LABEL = r"(?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?"
# Whitespace between PEM lines, with newlines real or JSON-escaped (\n, \r).
_PEM_GAP = r"(?:\s|\\[rn])*+"
# A piece of PEM body: base64 (with JSON's escaped \/), an RFC 1421 header such
# as Proc-Type: or DEK-Info:, or an earlier redaction.
_PEM_CHUNK = r"(?:(?:[A-Za-z0-9+/=]|\\/)++|[A-Za-z-]++:[^\r\n\\]*+|\[REDACTED\])"
_B64_LINE = r"[ \t]*+[A-Za-z0-9+/=]++[ \t]*+\r?$"
_B64_LINES = rf"{_B64_LINE}(?:\n{_B64_LINE})*+"


# ---- the patterns, applied in order ---------------------------------------

_SECRET_NEEDLES = ("pass", "pwd", "secret", "token", "credential", "key")


def _pattern(name: str, needles: tuple[str, ...], regex: str, flags: int = 0) -> _Pattern:
    # ASCII: keys and token alphabets are ASCII, and the needle check relies on it.
    return _Pattern(name, needles, re.compile(regex, re.ASCII | flags))


_PATTERNS: tuple[_Pattern, ...] = (
    # A whole private key: the body goes, BEGIN/END stay; with no END line
    # (output cut short) everything key-shaped after BEGIN goes.
    _pattern(
        "pem_private_key",
        ("private key",),
        rf"-----BEGIN {_PEM_LABEL}-----{_PEM_GAP}(?P<v>{_PEM_CHUNK}(?:{_PEM_GAP}{_PEM_CHUNK})*+)",
    ),
    # A key whose BEGIN line was cut off (log tail): base64 lines right above an
    # END line. The second branch consumes runs not followed by END, so each
    # run is scanned once (linear) and is left unchanged.
    _pattern(
        "pem_private_key_headless",
        ("private key",),
        rf"^(?:(?P<v>{_B64_LINES})(?=\n[ \t]*-----END {_PEM_LABEL}-----)|{_B64_LINES})",
        re.M,
    ),
    # scheme://user:pass@host (postgres, redis, https, mongodb+srv...): keep the user.
    _pattern(
        "url_credentials",
        ("://",),
        r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*+://[^\s:/@]*+:(?P<v>[^\s@/]++)@",
    ),
    # Authorization / Proxy-Authorization headers, any scheme (Bearer, Basic, token).
    _pattern(
        "authorization_header",
        ("authorization",),
        r"(?<!\w)authorization[\"']?[ \t]*+[:=][ \t]*+[\"']?(?:[A-Za-z][\w-]*+[ \t]++)?(?P<v>[^\s\"',;]++)",
        re.I,
    ),
    # A bearer token outside a header (curl -H lines, error messages). 16+ chars
    # so prose such as "Bearer authentication" is left alone.
    _pattern("bearer_token", ("bearer",), r"(?<![\w-])bearer[ \t]++(?P<v>[A-Za-z0-9._~+/-]{16,}+=*+)", re.I),
    # JSON / Python-dict pairs: "client_secret": "...". A quoted key takes only a
    # quoted value, so structure ("secrets": {) and prose ("token-api": x) stay.
    _pattern(
        "json_pair",
        _SECRET_NEEDLES,
        rf"(?P<kq>[\"']){_KEY}(?P=kq)[ \t]*+:[ \t]*+{_QUOTED_VALUE}",
        re.I,
    ),
    # key=value, key = value, KEY="value", key: value (env files, YAML, logs,
    # query strings, --flag=value). The colon form needs a space or quote after
    # it (so image:tag and host:port stay) and never takes a YAML/JSON { or [.
    # Not after / so a path such as /run/secrets/db_password: stays.
    _pattern(
        "key_value",
        _SECRET_NEEDLES,
        rf"(?<![\w./-]){_KEY}[ \t]*+(?:=[ \t]*+|:(?:[ \t]++|(?=[\"']))(?![\[{{]))" + _value(r"[^\s\"',;&]++"),
        re.I,
    ),
    # --password x, --token "x", --api-key x, --client-secret x (space form).
    _pattern(
        "cli_flag",
        _SECRET_NEEDLES,
        rf"(?<![\w-])--{_KEY}[ \t]++" + _value(r"(?!-)[^\s\"';&|]++"),
        re.I,
    ),
    # docker login -u user -p pass (-p alone is too ambiguous elsewhere).
    _pattern(
        "docker_login_p",
        ("login",),
        r"(?<![\w-])docker[ \t]++login(?:[ \t]++(?!-p\b|docker\b)\S++)*+[ \t]++-p(?:[ \t]++|=)"
        + _value(r"[^\s\"';&|]++"),
    ),
    # Signed-URL signatures (?sig=, &X-Amz-Signature=): no secret word in the key.
    _pattern(
        "query_signature",
        ("sig",),
        r"[?&](?:sig|signature|x-amz-signature|x-goog-signature)=(?P<v>[^&\s#\"']++)",
        re.I,
    ),
    # AWS access key ids; the AKIA/ASIA prefix stays as the label.
    _pattern("aws_access_key_id", ("akia", "asia"), r"(?<![A-Z0-9])(?:AKIA|ASIA)(?P<v>[A-Z0-9]{16})(?![A-Z0-9])"),
    # GitHub tokens: personal, OAuth, user-to-server, server-to-server, refresh.
    _pattern(
        "github_token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
        r"(?<![A-Za-z0-9_])gh[pousr]_(?P<v>[A-Za-z0-9]{36,}+)",
    ),
    # GitHub fine-grained personal access tokens.
    _pattern("github_pat", ("github_pat_",), r"(?<![A-Za-z0-9_])github_pat_(?P<v>[A-Za-z0-9_]{22,}+)"),
    # Slack bot, app, user, refresh and legacy tokens.
    _pattern("slack_token", ("xox",), r"(?<![A-Za-z0-9_-])xox[baprs]-(?P<v>[A-Za-z0-9-]{10,}+)"),
    # Stripe secret and restricted keys.
    _pattern("stripe_key", ("k_live_", "k_test_"), r"(?<![A-Za-z0-9_])[rs]k_(?:live|test)_(?P<v>[A-Za-z0-9]{10,}+)"),
    # Google API keys.
    _pattern("google_api_key", ("aiza",), r"(?<![A-Za-z0-9_-])AIza(?P<v>[A-Za-z0-9_-]{35})"),
    # JSON Web Tokens (header.payload.signature, both JSON parts start eyJ).
    _pattern(
        "jwt",
        ("eyj",),
        r"(?<![A-Za-z0-9_-])(?P<v>eyJ[A-Za-z0-9_-]*+\.eyJ[A-Za-z0-9_-]*+\.[A-Za-z0-9_-]*+)",
    ),
)


def _hide(match: re.Match[str]) -> str:
    if match.start("v") < 0:
        return match[0]
    start = match.start()
    return match[0][: match.start("v") - start] + REDACTED + match[0][match.end("v") - start :]


def redact(text: str) -> str:
    """`text` with every secret value replaced by REDACTED, labels kept."""
    # Needles are looked for in the input once: a REDACTED never adds one.
    lowered = text.lower()
    for pattern in _PATTERNS:
        if any(needle in lowered for needle in pattern.needles):
            text = pattern.regex.sub(_hide, text)
    return text


def redact_and_cap(text: str, limit: int = MAX_STORED) -> str:
    """Redact, then keep the last `limit` characters (the tail holds the error).

    Redacting first means a secret the cut runs through is already gone. When
    it cuts, a marker saying how much was cut leads, and the result, marker
    included, is at most `limit` long, so capping again changes nothing.
    """
    text = redact(text)
    if len(text) <= limit:
        return text
    # The count in the marker is below len(text), so this size is never short.
    room = limit - len(_TRUNCATED.format(len(text)))
    if room <= 0:  # no room for the marker: the bare tail
        return text[len(text) - limit :]
    return _TRUNCATED.format(len(text) - room) + text[-room:]
