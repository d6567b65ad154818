"""Schemathesis against a real router's ``/openapi.json`` (real redis-server behind it).

Every operation of the published schema gets generated requests, valid (positive) and
invalid (negative: wrong types, missing fields, no API key...), sent with the API key and
judged by schemathesis' checks: no server error (Redis is up, so not even the documented
503), status codes, content types, headers and bodies as documented, invalid input refused
with 4xx.

The pytest plugin's lazy fixture loader does not work with this pytest version (it reads a
private ``_nodeid``), so the tests drive schemathesis' Python API: one hypothesis run per
operation and generation mode, every case counted.

Known schema imprecisions (reported, see the second test): the document does not say that a
publish needs exactly one of ``user``/``channel``/``broadcast``, nor the rules for user and
channel path parameters, so schema-valid requests can get 422; and a path parameter with a
line break matches no route (404, undocumented).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance, status_code_conformance

from tests.support import API_KEY, Proc, RedisServer, start_router

pytestmark = pytest.mark.integration

# Bounded by count, not by the clock: a time budget failed the run on a slower machine. The
# total is split over every (operation, mode) pair, so new operations do not lengthen the run.
TOTAL_EXAMPLES = 1600
MIN_EXAMPLES = 25  # per operation and generation mode, however many operations there are
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


@dataclass
class Outcome:
    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    no_input: list[str] = field(default_factory=list)  # e.g. negative mode, no parameters
    seconds: float = 0.0

    def summary(self, title: str) -> str:
        lines = [f"\n{title}: {sum(self.cases.values())} cases in {self.seconds:.1f}s; "
                 f"statuses {dict(sorted(self.statuses.items()))}"]
        lines += [f"  {n:4d}  {label}" for label, n in sorted(self.cases.items())]
        if self.no_input:
            lines.append(f"  (nothing to generate for: {', '.join(self.no_input)})")
        return "\n".join(lines)


@pytest.fixture
def router(redis_server: RedisServer, logdir: Path) -> Iterator[Proc]:
    proc = start_router(redis_server, logdir)
    try:
        yield proc
    finally:
        proc.stop()


def line_break_in_path(case: Case) -> bool:
    # path parameters arrive percent-encoded
    return any(isinstance(v, str) and any(c in v.upper() for c in ("%0A", "%0D", "\n", "\r"))
               for v in case.path_parameters.values())


def run_schema(router: Proc, modes: tuple[GenerationMode, ...], *,
               keep: Callable[[Case], bool] = lambda case: True,
               **validate: Any) -> Outcome:
    base_url = f"http://127.0.0.1:{router.port}"
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", wait_for_schema=10)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9, [op.label for op in operations]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    session = requests.Session()
    out = Outcome()
    started = time.monotonic()
    examples = max(MIN_EXAMPLES, TOTAL_EXAMPLES // (len(operations) * len(modes)))

    def check(operation: schemathesis.APIOperation, mode: GenerationMode, label: str) -> None:
        @given(case=operation.as_strategy(generation_mode=mode).filter(keep))
        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Case) -> None:
            response = case.call_and_validate(base_url=base_url, session=session,
                                              headers=headers, **validate)
            out.cases[label] += 1
            out.statuses[response.status_code] += 1
            assert response.status_code < 500, response.text[:300]

        run()

    for operation in operations:
        for mode in modes:
            label = f"{operation.label} [{mode.value}]"
            try:
                check(operation, mode, label)
            except Unsatisfiable:
                out.no_input.append(label)
            except (Exception, BaseExceptionGroup) as exc:  # report every operation
                out.failures.append(f"{label}: {exc}"[:3000])
    out.seconds = time.monotonic() - started
    session.close()
    return out


def test_router_has_no_server_errors_and_answers_as_documented(router: Proc) -> None:
    outcome = run_schema(router, MODES, keep=lambda case: not line_break_in_path(case),
                         excluded_checks=[positive_data_acceptance])
    print(outcome.summary("schemathesis, all checks but positive_data_acceptance"))
    assert not outcome.failures, "\n\n".join(outcome.failures)
    assert sum(outcome.cases.values()) >= 500
    assert not any(s >= 500 for s in outcome.statuses)
    assert "Traceback" not in router.output(), router.output()[-3000:]


@pytest.mark.xfail(strict=True, reason=(
    "router OpenAPI imprecision: 'data' is documented as any JSON value, but integers outside "
    "the 64-bit range anywhere inside it are refused with 422 (msgpack cannot carry them); "
    "JSON Schema can state that only with a recursive value schema, which the generator here "
    "does not support"))
def test_router_accepts_every_request_its_schema_allows(router: Proc) -> None:
    outcome = run_schema(router, (GenerationMode.POSITIVE,),
                         checks=[positive_data_acceptance, status_code_conformance])
    print(outcome.summary("schemathesis, positive data acceptance"))
    assert not outcome.failures, "\n\n".join(outcome.failures)
