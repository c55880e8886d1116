"""Store URIs: ``scheme://location/name?options`` names one secret in one secret manager.

==========  ==============================================  =====================================
scheme      example                                         location, name
==========  ==============================================  =====================================
local       ``local:///var/lib/rotate/store.db?secret=jwt``  SQLite file path, ``secret`` option
aws         ``aws://prod/auth/jwt?region=eu-west-1``         (none), the secret name or ARN
vault       ``vault://secret/auth/jwt``                      KV v2 mount, path under the mount
k8s         ``k8s://auth/jwt-keys``                          namespace, Secret name
azure       ``azure://my-vault/jwt-signing``                 Key Vault name, secret name
gcp         ``gcp://my-project/jwt-signing``                 project id, secret id
==========  ==============================================  =====================================

A URI never carries credentials: each manager's SDK finds them through its standard chain.

Every spelling of one secret parses to the same :class:`SecretURI`, whose :attr:`~SecretURI.display` is the
secret's identity (the lock, the journal and the audit trail key on it): the scheme is case-folded, percent-encoding
is decoded, paths are normalised (a local store's path as the file system resolves it; repeated or trailing slashes
elsewhere), options are sorted, and each store drops the options it would default to anyway
(:meth:`stores.base.SecretStore.canonical_options`). A query that repeats a key is ambiguous and refused.
"""

from __future__ import annotations

import os
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode

from pydantic import BaseModel, ConfigDict

from stores.errors import InvalidStoreURI

Scheme = Literal["local", "aws", "vault", "k8s", "azure", "gcp"]
SCHEMES: tuple[str, ...] = ("local", "aws", "vault", "k8s", "azure", "gcp")
_TWO_PART = {"vault": "mount", "k8s": "namespace", "azure": "vault name", "gcp": "project"}


class SecretURI(BaseModel):
    """A parsed store URI."""

    model_config = ConfigDict(frozen=True)

    scheme: Scheme
    location: str
    name: str
    options: dict[str, str] = {}

    @classmethod
    def parse(cls, uri: str) -> SecretURI:
        scheme, sep, rest = uri.partition("://")
        scheme = scheme.lower()
        if not sep:
            raise InvalidStoreURI(
                f"{uri!r} is not a store URI: expected scheme://..., for example local:///path/store.db?secret=NAME"
            )
        if scheme not in SCHEMES:
            raise InvalidStoreURI(
                f"unknown store scheme {scheme!r} in {uri!r}: use one of {', '.join(SCHEMES)} "
                "(for example local:///path/store.db?secret=NAME or aws://NAME?region=REGION)"
            )
        path, _, query = rest.partition("?")
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError as exc:
            raise InvalidStoreURI(f"malformed options {query!r} in store URI {uri!r}") from exc
        options = dict(pairs)
        if len(options) < len(pairs):
            repeated = sorted({k for k, _ in pairs if [key for key, _ in pairs].count(k) > 1})
            raise InvalidStoreURI(
                f"store URI {uri!r} gives {', '.join(repeated)} more than once, so it is ambiguous: "
                "give each option once"
            )
        if "@" in path.split("/", 1)[0]:
            raise InvalidStoreURI(
                f"store URI {scheme}://... must not carry credentials: remove the user@ part; "
                "credentials come from the environment"
            )
        path = unquote(path)
        if scheme == "local":
            name = options.pop("secret", "")
            if not path.startswith("/") or not name:
                raise InvalidStoreURI(
                    f"local store URI {uri!r} needs an absolute path and a secret name: "
                    "local:///path/store.db?secret=NAME"
                )
            return cls(scheme="local", location=os.path.realpath(path), name=name, options=options)
        if scheme == "aws":
            if not path:
                raise InvalidStoreURI(f"aws store URI {uri!r} needs a secret name: aws://NAME?region=REGION")
            return cls(scheme="aws", location="", name=path, options=options)
        location, _, name = "/".join(part for part in path.split("/") if part).partition("/")
        if scheme == "azure":
            location = location.lower()  # a Key Vault name is a DNS label
        if not location or not name:
            raise InvalidStoreURI(
                f"{scheme} store URI {uri!r} needs a {_TWO_PART[scheme]} and a secret name: "
                f"{scheme}://{_TWO_PART[scheme].upper().replace(' ', '_')}/NAME"
            )
        return cls(scheme=scheme, location=location, name=name, options=options)

    @property
    def display(self) -> str:
        """The URI in its canonical form: the secret's identity, for messages, locks and the journal."""
        options = dict(sorted(self.options.items()))
        if self.scheme == "local":
            head, options = self.location, {"secret": self.name, **options}
        else:
            head = f"{self.location}/{self.name}" if self.location else self.name
        # '*' stays as written: a selection (a restore's prod/*) reads as typed, and '*' is legal in both parts.
        query = urlencode(options, safe=":/*")
        return f"{self.scheme}://{quote(head, safe='/:@*')}" + (f"?{query}" if query else "")

    def __str__(self) -> str:
        return self.display

    def overlaps(self, other: SecretURI) -> bool:
        """Whether the two name a secret in common, in the same place: the same secret, or a selection (a name
        ending in ``*``, as a restore takes) and a secret or another selection it covers."""
        if (self.scheme, self.location, self.options) != (other.scheme, other.location, other.options):
            return False
        mine, theirs = self.name.removesuffix("*"), other.name.removesuffix("*")
        covers, covered = self.name.endswith("*"), other.name.endswith("*")
        return mine == theirs or (covers and theirs.startswith(mine)) or (covered and mine.startswith(theirs))
