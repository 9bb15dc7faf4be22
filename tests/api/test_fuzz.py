"""The OpenAPI spec, fuzzed: schemathesis sends valid and invalid requests to every operation of a
real API server (uvicorn on a free port, the suite's Redis) and no answer may be a 5xx.

Bounded and reproducible: a fixed Hypothesis seed, a fixed number of examples per operation and
generation mode, no example database. A failure names the operation and the request that broke it.
"""

from __future__ import annotations

from collections.abc import Iterator

import hypothesis
import hypothesis.errors
import pytest
import redis as redis_sync
import schemathesis
from hypothesis import HealthCheck
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from api.app import create_app
from config.settings import TenantSettings
from tests.api.harness import serve
from tests.conftest import make_settings

SEED = 20261130
EXAMPLES = 15  # per operation and generation mode, after the coverage cases: 14 operations x 2 x 15
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
CHECKS: list[schemathesis.CheckFunction] = [not_a_server_error]
# The tenant's key reaches every tenant route; the admin key the operator routes (lanes, metrics,
# every tenant's costs and budgets), which answer a tenant 403 before reading a parameter.
KEYS = {
    "tenant": ("Bearer acme-key", None),
    "admin": ("Bearer admin-key", ("/v1/lanes", "/metrics", "/v1/costs", "/v1/budget")),
}


@pytest.fixture
def api_url(redis_url: str) -> Iterator[str]:
    redis_sync.Redis.from_url(redis_url).flushdb()
    settings = make_settings(
        redis_url,
        tenants={
            "acme": TenantSettings(
                api_key="acme-key",
                webhook_secrets=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
                monthly_budget_usd=5.0,
                max_job_cost_usd=1.0,
            )
        },
    )
    with serve(create_app(settings)) as url:
        yield url


def fuzz(
    schema: schemathesis.BaseSchema, base_url: str, authorization: str, paths: tuple[str, ...] | None
) -> list[str]:
    """Each operation (of ``paths``, or all): coverage cases, then Hypothesis-generated valid and
    invalid ones; the failures as 'METHOD path (phase): error'."""
    failures: list[str] = []
    headers = {"authorization": authorization}
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # a spec that does not load fails here
        if paths is not None and operation.path not in paths:
            continue
        # Coverage: schemathesis' deterministic boundary and wrong-type values for every parameter.
        coverage = schema.iter_coverage_cases(
            operation,
            generation_modes=MODES,
            generation_config=schema.config.generation_for(operation=operation),
        )
        for case in coverage:
            try:
                case.validate_response(
                    case.call(base_url=base_url, headers=headers, timeout=30), checks=CHECKS
                )
            except Exception as exc:
                failures.append(f"{operation.label} (coverage): {type(exc).__name__}: {exc}"[:2000])
                break
        for mode in MODES:

            @hypothesis.seed(SEED)
            @hypothesis.settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=False,
                suppress_health_check=list(HealthCheck),
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            )
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case) -> None:  # type: ignore[type-arg]
                case.validate_response(
                    case.call(base_url=base_url, headers=headers, timeout=30), checks=CHECKS
                )

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                continue  # no parameters to get wrong (GET /healthz has no invalid request)
            except Exception as exc:  # collect every operation's failure, then report them all
                failures.append(f"{operation.label} ({mode.value}): {type(exc).__name__}: {exc}"[:2000])
    return failures


@pytest.mark.parametrize("key", list(KEYS))
def test_no_request_the_spec_allows_or_forbids_gets_a_server_error(api_url: str, key: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    failures = fuzz(schema, api_url, *KEYS[key])
    assert not failures, "\n\n".join(failures)
