"""OpenPGP through the gpg binary (python-gnupg): encrypt to recipients, decrypt, sign and verify a manifest.

Keys are named by their full fingerprint, never by an e-mail address or a short id: an address matches whichever key
someone imported under it, a fingerprint names one key. Because the operator names each recipient by fingerprint,
encryption trusts exactly those keys (``always_trust``) instead of the keyring's web of trust. Secret keys must be
usable without a prompt (no passphrase, or one the gpg-agent already holds): a scheduled run has nobody to ask.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from functools import cached_property
from typing import Any

import gnupg

from errors import BadInput, CheckFailed, PermissionDenied

_FINGERPRINT = re.compile(r"^[0-9A-F]{40}$")
_UNUSABLE = {"r": "revoked", "e": "expired", "d": "disabled", "i": "invalid"}
_CAPABILITY = {"E": "encrypt (it has no encryption subkey)", "S": "sign"}


class KeyringError(BadInput):
    """A key that is missing, unusable, or named by something other than its fingerprint."""


class NotARecipient(PermissionDenied):
    """The payload is encrypted to keys whose secret half is not in this keyring."""


class SignatureInvalid(CheckFailed):
    """A manifest whose signature does not verify, is missing, or was made by an unexpected key."""


class RecipientsMismatch(CheckFailed):
    """A payload encrypted to other keys than its manifest says."""


class DecryptionFailed(CheckFailed):
    """gpg could not decrypt a payload it holds a key for: the ciphertext was altered or truncated."""


@functools.lru_cache(maxsize=16)
def _gpg(home: str | None) -> gnupg.GPG:
    # Building one runs gpg --version; a restore opens the same keyring once per secret.
    return gnupg.GPG(gnupghome=home)


def normalise_fingerprint(value: str) -> str:
    """``value`` as 40 upper-case hex digits (spaces allowed, as gpg prints them); else :class:`KeyringError`."""
    fingerprint = value.replace(" ", "").upper()
    if not _FINGERPRINT.match(fingerprint):
        raise KeyringError(
            f"{value!r} is not a full OpenPGP key fingerprint: give the 40 hex digits that "
            "gpg --list-keys --with-fingerprint shows (an e-mail address or a short key id may name someone else's key)"
        )
    return fingerprint


class Keyring:
    """The gpg home ``home`` (default: gpg's own, ``$GNUPGHOME`` or ``~/.gnupg``)."""

    def __init__(self, home: str | None = None) -> None:
        if home is not None and not os.path.isdir(home):
            raise KeyringError(f"gpg home {home} is not a folder: point gnupg_home at the keyring that holds the keys")
        if shutil.which("gpg") is None:
            raise KeyringError("the gpg program is not installed: install GnuPG (apt-get install gnupg)")
        self.home = home
        self._gpg = _gpg(home)

    @property
    def where(self) -> str:
        return f"gpg home {self.home}" if self.home else "the default gpg home"

    @cached_property
    def _public(self) -> list[dict[str, Any]]:
        return self._gpg.list_keys()

    def _secret_fingerprints(self) -> set[str]:
        return {key["fingerprint"] for key in self._gpg.list_keys(secret=True)}

    def _key(self, fingerprint: str) -> dict[str, Any] | None:
        return next((k for k in self._public if k["fingerprint"] == fingerprint), None)

    def _owner(self, key_id: str) -> dict[str, Any] | None:
        """The public key that ``key_id`` (a key id or fingerprint, of the primary key or a subkey) belongs to."""
        for key in self._public:
            ids = {key["fingerprint"], key["keyid"]} | {s[0] for s in key.get("subkeys", [])}
            ids |= {s[2] for s in key.get("subkeys", []) if len(s) > 2 and s[2]}
            if key_id in ids:
                return key
        return None

    def describe(self, key_id: str) -> str:
        """A key id as a person recognises it: the primary fingerprint and first user id, when the key is known."""
        key = self._owner(key_id)
        if key is None:
            return f"key id {key_id} (not in {self.where})"
        return f"{key['fingerprint']} ({key['uids'][0] if key.get('uids') else 'no user id'})"

    def check_recipient(self, value: str) -> str:
        """The fingerprint of a public key that can encrypt, or :class:`KeyringError` saying what to do."""
        return self._usable(value, "recipient", "E", "import it (gpg --import KEYFILE) or give another recipient")

    def check_signer(self, value: str) -> str:
        """The fingerprint of a key whose secret half this keyring holds, to sign manifests with."""
        return self._usable(
            value, "signing", "S", "import the backup host's signing key there, or leave the signing key out"
        )

    def _usable(self, value: str, role: str, capability: str, advice: str) -> str:
        fingerprint = normalise_fingerprint(value)
        key = self._key(fingerprint)
        if key is None:
            raise KeyringError(f"{role} key {fingerprint} is not in {self.where}: {advice}")
        if capability == "S" and fingerprint not in self._secret_fingerprints():
            raise KeyringError(f"{role} key {fingerprint} has no secret key in {self.where}: {advice}")
        problem = _UNUSABLE.get(key.get("trust", ""))
        if problem:
            raise KeyringError(f"{role} key {fingerprint} is {problem}: give a valid key")
        if capability not in key.get("cap", ""):
            raise KeyringError(f"{role} key {fingerprint} cannot {_CAPABILITY[capability]}: give another key")
        return fingerprint

    def encrypt(self, data: bytes, recipients: list[str]) -> bytes:
        result = self._gpg.encrypt(data, recipients, armor=False, always_trust=True)
        if not result.ok:
            raise KeyringError(f"gpg could not encrypt to {', '.join(recipients)} ({result.status}): check the keys")
        return result.data

    def recipients_of(self, payload: bytes) -> list[str]:
        """The key ids a payload is encrypted to (read from its packets, no secret key needed)."""
        return list(self._gpg.get_recipients(payload))

    def check_addressed(self, payload: bytes, recipients: list[str], what: str) -> None:
        """Refuse a payload that is not encrypted to exactly ``recipients`` (fingerprints); no secret key needed."""
        key_ids = self.recipients_of(payload)
        owners = {(self._owner(k) or {}).get("fingerprint", f"key id {k}") for k in key_ids}
        if owners != set(recipients):
            raise RecipientsMismatch(
                f"{what} is encrypted to {', '.join(sorted(owners)) or 'nobody gpg can name'}, but its manifest names "
                f"{', '.join(recipients)}: the archive or manifest was replaced; use another backup"
            )

    def decrypt(self, payload: bytes, what: str) -> bytes:
        """The plaintext of ``payload``; :class:`NotARecipient` naming its recipients if no secret key fits."""
        result = self._gpg.decrypt(payload)
        if result.ok:
            return result.data
        if result.status == "no secret key":
            named = "; ".join(self.describe(k) for k in self.recipients_of(payload)) or "no recipient gpg can read"
            raise NotARecipient(
                f"{what} is encrypted to {named}; {self.where} holds none of their secret keys: decrypt it where "
                "one of those keys lives (or point gnupg_home there)"
            )
        raise DecryptionFailed(
            f"{what} does not decrypt ({result.status}): the payload was altered or truncated; use another backup"
        )

    def sign(self, data: bytes, signer: str) -> bytes:
        result = self._gpg.sign(data, keyid=signer, detach=True, binary=False)
        if not result.data:
            raise KeyringError(
                f"gpg could not sign with key {signer} ({result.status}): the key may need a passphrase that the "
                "gpg-agent does not hold"
            )
        return result.data

    def verify(self, data: bytes, signature: bytes, what: str) -> str:
        """The fingerprint of the key that made ``signature`` over ``data``; :class:`SignatureInvalid` otherwise."""
        with tempfile.NamedTemporaryFile(prefix="manifest-", suffix=".asc") as handle:
            handle.write(signature)
            handle.flush()
            result = self._gpg.verify_data(handle.name, data)
        if result.valid and result.pubkey_fingerprint:
            return result.pubkey_fingerprint
        if result.status == "no public key":
            raise SignatureInvalid(
                f"{what} is signed by key id {result.key_id}, which is not in {self.where}: import the backup "
                "host's public key if you trust it"
            )
        raise SignatureInvalid(
            f"the signature of {what} does not verify ({result.status or 'no signature'}): the manifest or its "
            "signature was altered; use another backup"
        )
