"""Where a sweep runs: which Ray (runtime), the checks before a sweep starts (preflight) and of a running cluster
(doctor)."""
