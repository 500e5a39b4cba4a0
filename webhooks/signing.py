"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

Pure functions with no Django imports, so settings can validate WEBHOOK_SECRET with them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Iterable

SECRET_PREFIX = "whsec_"
# The spec asks for 24 to 64 random bytes; shorter keys are refused rather than silently weak.
SECRET_MIN_BYTES = 16
SECRET_MAX_BYTES = 64
GENERATED_SECRET_BYTES = 32


def secret_key_bytes(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret. Raises ValueError naming what is wrong."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"must have the form {SECRET_PREFIX}<base64>")
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"must have the form {SECRET_PREFIX}<base64>; the part after it is not base64"
        ) from None
    if not SECRET_MIN_BYTES <= len(key) <= SECRET_MAX_BYTES:
        raise ValueError(
            f"must decode to {SECRET_MIN_BYTES} to {SECRET_MAX_BYTES} bytes, got {len(key)} "
            f'(generate one with: python -c "import secrets,base64; '
            f"print('{SECRET_PREFIX}' + base64.b64encode(secrets.token_bytes(32)).decode())\")"
        )
    return key


def secret_generate() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(GENERATED_SECRET_BYTES)).decode()


def signature(*, key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature over ``{msg_id}.{timestamp}.{body}``."""
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signature_header(*, keys: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per key, space-separated (key rotation)."""
    return " ".join(signature(key=key, msg_id=msg_id, timestamp=timestamp, body=body) for key in keys)
