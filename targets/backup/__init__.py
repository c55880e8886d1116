"""Backups of secrets: OpenPGP encryption and signatures, the archive and its manifest, where backups are kept,
and which ones a retention policy keeps. Pure code: no Prefect and no secret stores.
"""
