"""PEM private keys, each checked once per process.

cryptography checks an RSA private key's consistency as it loads it (about 35 ms for 2048 bits on these machines),
and a rotation reads its key set anew for every check and verification, so that each acts on what the store holds:
a SAML rotation spent most of its CPU checking the same keys again. A key is checked the first time a process loads
it; loading the same PEM again gives the checked key.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes


@lru_cache(maxsize=64)
def load_pem_private_key(pem: str) -> PrivateKeyTypes:
    """The unencrypted private key ``pem`` holds; raises as cryptography does (ValueError for a malformed PEM,
    TypeError for an encrypted one), every time: failures are not kept."""
    return serialization.load_pem_private_key(pem.encode(), password=None)
