"""schemathesis against the collector's live OpenAPI schema (loaded from ``/openapi.json`` of
the running app), every operation, valid and invalid inputs (positive and negative
generation), each case sent with a valid token, with a valid token on an existing run, with
a revoked token and with none: zero 5xx answers and every answer conforming to the schema.
Bounded to a few dozen examples per operation so the whole run stays around a minute.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from monitor.api import create_app
from monitor.settings import Settings

EXAMPLES = 20
CHECKS = [not_a_server_error, response_schema_conformance]


@pytest.fixture
def target(store):  # noqa: ANN201
    app = create_app(Settings(db=store.url), store=store)
    token, _ = store.create_token("fuzz")
    revoked, _ = store.create_token("fuzz")
    store.revoke_token(revoked)
    client = TestClient(app)
    h = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/v1/runs", json={"id": "live", "name": "live"}, headers=h).status_code == 201
    pts = [
        {"step": s, "values": {"loss": 2.0 if s != 9 else "nan", "layer.0.fc2.l2_mean": 1.0}}
        for s in range(10)
    ]
    assert (
        client.post("/api/v1/runs/live/points", json={"batch_id": "b", "points": pts}, headers=h).status_code
        == 200
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return schema, token, revoked


def test_every_operation_conforms_and_never_5xx(target):
    schema, token, revoked = target
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) >= 14  # every API operation is in the live schema
    auths = [
        {"Authorization": f"Bearer {token}"},
        {"Authorization": f"Bearer {revoked}"},
        {"Authorization": "Bearer stm_" + "A" * 43},
        {},
    ]
    seen: dict[str, set[int]] = {}

    def fuzz(label: str, strategy) -> None:  # noqa: ANN001
        seen[label] = set()

        @settings(
            max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        @given(case=strategy)
        def run(case) -> None:  # noqa: ANN001
            for headers in auths:
                case.call_and_validate(headers=headers, checks=CHECKS)
            if "run_id" in (case.path_parameters or {}):
                case.path_parameters["run_id"] = "live"  # a run that exists, with points and an alert
                resp = case.call_and_validate(headers=auths[0], checks=CHECKS)
                seen[label].add(resp.status_code)

        run()

    for op in ops:
        fuzz(
            f"{op.method.upper()} {op.path}",
            st.one_of(*(op.as_strategy(generation_mode=m) for m in GenerationMode)),
        )
    # The existing run was reached: some operations answered 2xx on it, not only 404/422.
    ok = {k for k, v in seen.items() if any(200 <= s < 300 for s in v)}
    assert {"GET /api/v1/runs/{run_id}", "GET /api/v1/runs/{run_id}/keys"} <= ok, seen
