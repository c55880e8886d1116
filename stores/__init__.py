"""Where secrets live: one adapter per secret manager behind :class:`~stores.base.SecretStore`.

``open_store("aws://prod/auth/jwt?region=eu-west-1")`` returns the adapter for one secret. Adapters are imported
on first use so that a missing SDK only matters to the people who use that manager.
"""

from __future__ import annotations

import importlib

from stores.base import SecretDescription, SecretStore, Stage, VersionInfo
from stores.errors import InvalidStoreURI, StoreError
from stores.uri import SecretURI

_ADAPTERS = {
    "local": "stores.local:LocalStore",
    "aws": "stores.aws:AwsStore",
    "vault": "stores.vault:VaultStore",
    "k8s": "stores.k8s:KubernetesStore",
    "azure": "stores.azure:AzureStore",
    "gcp": "stores.gcp:GcpStore",
}


def open_store(uri: str | SecretURI) -> SecretStore:
    """The store adapter for the secret named by ``uri``."""
    parsed = uri if isinstance(uri, SecretURI) else SecretURI.parse(uri)
    module_name, _, class_name = _ADAPTERS[parsed.scheme].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise InvalidStoreURI(
            f"the {parsed.scheme} store needs a package that is not installed ({exc.name}); "
            "install this project with its dependencies: pip install -e ."
        ) from exc
    return getattr(module, class_name)(parsed)


__all__ = [
    "InvalidStoreURI",
    "SecretDescription",
    "SecretStore",
    "SecretURI",
    "Stage",
    "StoreError",
    "VersionInfo",
    "open_store",
]
