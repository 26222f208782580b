"""Credentials never written down, logged or handed to Ray in clear.

Three tools, used wherever a config, an error or a URL leaves the process:
- `redact_secrets(value)`: a copy of a config value (storage options, at any depth) with every
  secret masked as "***": values under secret-looking keys (keys, secrets, tokens, passwords,
  credentials, `auth` tuples, `Authorization` headers, connection strings, SAS tokens, session
  tokens), passwords inside URLs (`https://user:pass@host` -> `https://user:***@host`) and query
  strings of HTTP(S) URLs (pre-signed URLs carry their signature there).
- `scrub_text(text, options)`: the same for free text (error messages, log lines): URL passwords
  and query strings, and the literal value of every secret in `options`.
- `SecretOptions` (pipeline/runner, training jobs): storage options put into Ray's object store
  once by the driver; workers get them back with `resolve()`. Ray's task and actor specs, the
  Train loop config, the state API and the dashboard then only ever hold an object id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

MASK = "***"
SECRET_KEY_HINTS = ("key", "secret", "token", "password", "passwd", "credential", "auth", "connection_string",
                    "connectionstring", "sas", "private")
# scheme://user:password@host -> the password; http(s) query strings (signatures)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@'\"]*:)(?P<pw>[^@/\s'\"]+)(?=@)")
_URL_QUERY = re.compile(r"(?P<head>\bhttps?://[^\s?#'\"]+)\?(?P<query>[^\s#'\"]*)")


def is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and any(h in key.lower().replace("-", "_") for h in SECRET_KEY_HINTS)


def redact_url(text: str) -> str:
    """Passwords inside URLs and HTTP(S) query strings masked; anything else unchanged."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    return _URL_QUERY.sub(lambda m: m.group("head") + "?" + MASK, text)


def redact_secrets(value: Any) -> Any:
    """A copy of `value` with every secret masked, at any depth (see the module doc)."""
    if isinstance(value, dict):
        return {k: (MASK if is_secret_key(k) and v not in (None, "") else redact_secrets(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_secrets(v) for v in value)
    if isinstance(value, str):
        return redact_url(value)
    return value


def redact_urls(value: Any) -> Any:
    """Only the URL part of `redact_secrets`, at any depth (for config fields that are not
    storage options, where keys like `tokenizer` are no secret)."""
    if isinstance(value, dict):
        return {k: redact_urls(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_urls(v) for v in value)
    return redact_url(value) if isinstance(value, str) else value


def secret_values(value: Any) -> list[str]:
    """Every string that `redact_secrets` would mask under a secret key, at any depth."""
    found: list[str] = []

    def walk(v: Any, secret: bool) -> None:
        if isinstance(v, dict):
            for k, item in v.items():
                walk(item, secret or is_secret_key(k))
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item, secret)
        elif secret and isinstance(v, (str, bytes)) and len(v) >= 4:
            found.append(v.decode(errors="replace") if isinstance(v, bytes) else v)

    walk(value, False)
    return sorted(set(found), key=len, reverse=True)


def scrub_text(text: str, options: Any = None, extra: Iterable[str] = ()) -> str:
    """`text` with URL passwords, HTTP(S) query strings and the values of `options`' secrets masked."""
    for secret in [*secret_values(options), *extra]:
        if secret:
            text = text.replace(secret, MASK)
    return redact_url(text)


def scrub_argv(argv: list[str]) -> list[str]:
    """A command line with `KEY=VALUE` items of secret keys masked (at any nesting of YAML-style
    values: `client_kwargs={aws_secret_access_key: x}`), URL passwords and HTTP query strings too."""
    out = []
    for item in argv:
        key, sep, value = item.partition("=")
        if sep and is_secret_key(key.lstrip("-")):
            item = f"{key}={MASK}"
        elif sep and any(is_secret_key(k) for k in re.findall(r"[{,]\s*([A-Za-z_][\w-]*)\s*:", value)):
            item = f"{key}={MASK}"
        out.append(redact_url(item))
    return out


@dataclass(frozen=True)
class SecretOptions:
    """Storage options in Ray's object store: what travels through Ray is the object id.

    `SecretOptions.put(options)` on the driver (Ray initialised); `resolve()` in any worker of the
    same Ray job. Without Ray, or for empty options, the dict is held directly (nothing to hide
    from Ray when Ray is not involved)."""

    ref: Any = None
    inline: dict[str, Any] | None = None

    @classmethod
    def put(cls, options: dict[str, Any] | None) -> "SecretOptions":
        options = dict(options or {})
        if not options:
            return cls(inline={})
        try:
            import ray

            if ray.is_initialized():
                return cls(ref=ray.put(options))
        except ImportError:
            pass
        return cls(inline=options)

    def resolve(self) -> dict[str, Any]:
        if self.ref is None:
            return dict(self.inline or {})
        import ray

        return dict(ray.get(self.ref))

    def __repr__(self) -> str:  # never print the inline options
        return f"SecretOptions({'object ' + self.ref.hex() if self.ref is not None else MASK})"
