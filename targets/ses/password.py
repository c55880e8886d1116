"""The Amazon SES SMTP password of an IAM access key, by the algorithm AWS publishes for it.

AWS's SES developer guide ("Obtaining Amazon SES SMTP credentials by converting existing AWS credentials") derives
the password from the secret access key with the Signature Version 4 key chain, fixed inputs, and one more HMAC:

    kDate     = HMAC-SHA256("AWS4" + secret access key, "11111111")
    kRegion   = HMAC-SHA256(kDate, region)
    kService  = HMAC-SHA256(kRegion, "ses")
    kSigning  = HMAC-SHA256(kService, "aws4_request")
    signature = HMAC-SHA256(kSigning, "SendRawEmail")
    password  = Base64(0x04 || signature)

The first four steps are SigV4's signing key, kept as their own function so that they can be checked against the
signing-key example AWS publishes for Signature Version 4. A password works only in the region it was derived for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from errors import BadInput
from redaction import register_secret

DATE = "11111111"
SERVICE = "ses"
TERMINAL = "aws4_request"
MESSAGE = "SendRawEmail"
VERSION = 0x04
REGION_PATTERN = r"^[a-z]{2}(?:-[a-z]+)+-\d+$"  # eu-west-1, us-gov-west-1, cn-north-1


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def signing_key(secret_access_key: str, date: str, region: str, service: str) -> bytes:
    """Signature Version 4's signing key (kSigning) for one date, region and service."""
    key = _hmac(f"AWS4{secret_access_key}".encode(), date)
    for part in (region, service, TERMINAL):
        key = _hmac(key, part)
    return key


def smtp_password(secret_access_key: str, region: str) -> str:
    """The SES SMTP password for ``region`` of the access key whose secret is ``secret_access_key``."""
    register_secret(secret_access_key)
    if not re.match(REGION_PATTERN, region):
        raise BadInput(f"{region!r} is not an AWS region name (such as eu-west-1); fix ses.region in the SMTP secret")
    signature = _hmac(signing_key(secret_access_key, DATE, region, SERVICE), MESSAGE)
    return register_secret(base64.b64encode(bytes([VERSION]) + signature).decode())
