"""Who is calling: bearer tokens from a file, or the client certificate of mutual TLS.

The token file holds one token a line, ``name:token`` or a bare token (then named ``token<line>``);
blank lines and lines starting with ``#`` are skipped. Every presented token is compared with every
configured one by ``hmac.compare_digest``, so the time taken says nothing about how much of a token
matched, nor which one. The name, never the token, is what logs and the index see.

Without a token file the caller is ``anonymous`` (allowed only where the settings allow it: loopback,
or mutual TLS, where uvicorn has checked the client's certificate against the CA before any request).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    BaseUser,
)
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response

from dicom_node.errors import ConfigError

ANONYMOUS = "anonymous"
CLIENT_CERTIFICATE = "tls-client"
REALM = "dicom-node"


@dataclass(frozen=True)
class Caller(BaseUser):
    """An authenticated caller: the token's name, or ``tls-client``/``anonymous``."""

    name: str

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.name


def read_tokens(path: Path) -> dict[str, str]:
    """token → name, from ``path``; ``ConfigError`` for an unreadable or empty file, or a repeated name."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"dicomweb.token_file {path}: cannot read it ({error})") from None
    tokens: dict[str, str] = {}
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.rpartition(":")
        if not sep:
            name, token = f"token{number}", line
        name, token = name.strip(), token.strip()
        if len(token) < 16:
            raise ConfigError(
                f"dicomweb.token_file {path}, line {number}: a token needs 16 characters or more"
            )
        if name in names:
            raise ConfigError(f"dicomweb.token_file {path}, line {number}: name {name!r} given twice")
        names.add(name)
        tokens[token] = name
    if not tokens:
        raise ConfigError(f"dicomweb.token_file {path} holds no token")
    return tokens


class BearerTokens(AuthenticationBackend):
    """``Authorization: Bearer <token>`` against the token file; without one, everyone is ``default``."""

    def __init__(self, tokens: dict[str, str] | None, default: str = ANONYMOUS) -> None:
        self.tokens = [(token.encode(), name) for token, name in (tokens or {}).items()]
        self.default = default

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        if not self.tokens:
            return AuthCredentials(["dicomweb"]), Caller(self.default)
        header = conn.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise AuthenticationError("a bearer token is required (Authorization: Bearer <token>)")
        candidate = presented.strip().encode()
        found: str | None = None
        for token, name in self.tokens:  # all of them, always: no early exit on a match
            if hmac.compare_digest(candidate, token):
                found = name
        if found is None:
            raise AuthenticationError("the bearer token is not valid")
        return AuthCredentials(["dicomweb"]), Caller(found)


def refused(conn: HTTPConnection, error: AuthenticationError) -> Response:
    """401 with the challenge RFC 6750 asks for, and the reason as a JSON body."""
    code = "invalid_token" if "not valid" in str(error) else "invalid_request"
    return JSONResponse(
        {"error": str(error)},
        status_code=401,
        headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="{code}"'},
    )
