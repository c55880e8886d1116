"""A SAML service provider's key pairs: certificates, the stored key set, and the SP metadata that publishes them.

- :mod:`targets.saml.certificates`: key pairs, self-signed certificates, signing requests, and the checks a
  certificate must pass (its key, its validity, its subject and key usage, its expiry).
- :mod:`targets.saml.keyset`: the stored secret (the SP's key pairs with their role in a rollover) and the pure
  functions that build each phase's next document.
- :mod:`targets.saml.metadata`: SAML 2.0 SP metadata, generated from a key set and parsed back per use.
- :mod:`targets.saml.sign_in`: a sign-in as a browser makes it, from the SP to its identity provider and back.

No Prefect and no store here; messages name keys by id and certificates by fingerprint, never key material.
"""
