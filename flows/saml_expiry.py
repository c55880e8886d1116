"""Runbook: every day, the days left on each certificate of a SAML key set, and a rotation once one is due.

1. Report each certificate's days left and renewal date: by default once two thirds of its validity have passed
   (as cert-manager renews), or ``renew_before_days`` before it expires.
2. When the signing certificate is due, start the rotation deployment (flows/saml.py), which runs on its own with
   its approvals and waits, once per certificate (a check run again gets the run started before). A key set
   holding a second pair is in a rotation already: nothing is started.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.saml import report_certificate_expiry, start_saml_rotation


@flow(name="check-saml-certificate-expiry", log_prints=False, persist_result=False)
def check_saml_certificate_expiry(
    secret: str, rotation_deployment: str, renew_before_days: float | None = None
) -> dict[str, Any]:
    """Report the certificates of the SAML key set at ``secret``; start ``rotation_deployment`` (a deployment of
    ``rotate-saml-certificate`` for the same secret) when the signing certificate is due."""
    report = report_certificate_expiry(secret, renew_before_days)
    due = [c for c in report if c.status == "signing" and c.due]
    rotating = any(c.status != "signing" for c in report)
    started = start_saml_rotation(rotation_deployment, secret, due[0].fingerprint) if due and not rotating else None
    return {"certificates": [c.model_dump(mode="json") for c in report], "rotation_flow_run": started}
