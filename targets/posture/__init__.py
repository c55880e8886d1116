"""The posture report: what a secret's value is and how strong (shapes), the policy, the checks over the facts the
tasks gather, and the report for people (render). Pure: no Prefect, no stores; never a value in what it returns."""
