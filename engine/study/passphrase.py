"""The organiser's passphrase of a study: results and truth-bearing exports stay behind it.

Stored hashed, never in clear: scrypt (RFC 7914; n = 2**14, r = 8, p = 1, 32 bytes) over the
passphrase with a 16-byte random salt, as JSON in the database's ``meta`` table under
``organiser_passphrase:<study id>``. The key-value table already exists in every version-1
file, so the database layout (and :data:`engine.study.database.SCHEMA_VERSION`) is unchanged
and databases made before this feature open as they are: a study without a passphrase simply
has none yet.

A passphrase keeps honest readers from a results screen one menu away; it is not encryption:
whoever can read the database file can read its truth table.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets

from engine.study.errors import StudyError

KDF = "scrypt"
_N, _R, _P, _LENGTH = 2**14, 8, 1, 32
#: Shortest passphrase accepted (characters).
MIN_LENGTH = 6


def meta_key(study_id: int) -> str:
    """The ``meta`` key holding one study's passphrase record."""
    return f"organiser_passphrase:{int(study_id)}"


def _derive(passphrase: str, salt: bytes, *, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(passphrase.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=64 * 2**20)


def hash_passphrase(passphrase: str) -> str:
    """A JSON record of the salted scrypt hash of ``passphrase``.

    Raises:
        StudyError: the passphrase is shorter than :data:`MIN_LENGTH`.
    """
    if len(passphrase or "") < MIN_LENGTH:
        raise StudyError(f"an organiser passphrase needs at least {MIN_LENGTH} characters")
    salt = secrets.token_bytes(16)
    digest = _derive(passphrase, salt, n=_N, r=_R, p=_P, length=_LENGTH)
    return json.dumps({"kdf": KDF, "n": _N, "r": _R, "p": _P, "salt": salt.hex(), "hash": digest.hex()})


def verify_passphrase(passphrase: str, record: str) -> bool:
    """Whether ``passphrase`` matches a record made by :func:`hash_passphrase` (constant-time compare)."""
    try:
        data = json.loads(record)
        if data.get("kdf") != KDF:
            return False
        expected = bytes.fromhex(data["hash"])
        digest = _derive(
            passphrase or "",
            bytes.fromhex(data["salt"]),
            n=int(data["n"]),
            r=int(data["r"]),
            p=int(data["p"]),
            length=len(expected),
        )
    except (ValueError, KeyError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)
