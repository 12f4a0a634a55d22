"""Schemathesis checks of scripts/fuzz-api (loaded through SCHEMATHESIS_HOOKS).

`deadline_aware_server_error` replaces schemathesis's `not_a_server_error`: every 5xx fails the
run, except the two answers that are correct for a client that asked for a short deadline with
`Request-Timeout` (the fuzzer sends values like `1ms`):

- 504 `urn:problem:broker:timeout`: no reply within the deadline the client chose;
- 504 `urn:problem:broker:enqueue-unconfirmed`: the deadline passed before Redis confirmed the
  write (the write is bounded by the request's deadline);
- 503 `urn:problem:broker:wait-exceeds-deadline`: the queue is longer than that deadline.

Without a `Request-Timeout` header (so the deadline is the ingress's REQUEST_TIMEOUT) these fail
too: with a proxy reading and no fault injected, the stack must answer every request in time.
"""

import json

import schemathesis

SHORT_DEADLINE_ANSWERS = {
    (504, "urn:problem:broker:timeout"),
    (504, "urn:problem:broker:enqueue-unconfirmed"),
    (503, "urn:problem:broker:wait-exceeds-deadline"),
}


def _header(case, name):
    for key, value in (case.headers or {}).items():
        if key.lower() == name:
            return value
    return None


@schemathesis.check
def deadline_aware_server_error(ctx, response, case):
    """Fails on any 5xx but a deadline answer to a request that chose its own deadline."""
    status = response.status_code
    if status < 500:
        return None
    problem_type = None
    try:
        problem_type = json.loads(response.content).get("type")
    except (ValueError, AttributeError):
        pass
    if (status, problem_type) in SHORT_DEADLINE_ANSWERS and _header(case, "request-timeout"):
        return None
    raise AssertionError(
        f"server error {status} ({problem_type or 'no problem type'}) for a request that "
        "should have been answered"
    )
