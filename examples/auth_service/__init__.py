"""An example auth service that loads its JWT keyset from a secret store; see ``service.py``."""
