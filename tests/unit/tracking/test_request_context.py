"""MLflow's Databricks request headers: asked whether they apply once per process, not per request."""

from __future__ import annotations

from typing import Any

import pytest
from mlflow.tracking.request_header import registry
from mlflow.tracking.request_header.databricks_request_header_provider import (
    DatabricksRequestHeaderProvider,
)

from hpo.tracking import request_context


class CountingProvider(DatabricksRequestHeaderProvider):
    """Databricks' provider as MLflow registers it, answering ``inside`` and counting questions."""

    def __init__(self, inside: bool) -> None:
        self.inside = inside
        self.asked = 0
        self.headers_asked = 0

    def in_context(self) -> bool:
        self.asked += 1
        return self.inside

    def request_headers(self) -> dict[str, str]:
        self.headers_asked += 1
        return {"job_run_id": str(self.headers_asked)}


@pytest.fixture
def providers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """MLflow's registry of header providers, restored after the test."""
    kept = list(registry._request_header_provider_registry._registry)
    monkeypatch.setattr(registry._request_header_provider_registry, "_registry", kept)
    return kept


@pytest.mark.parametrize("inside", [False, True])
def test_the_databricks_context_is_asked_once_and_its_headers_every_time(
    providers: list[Any], inside: bool
) -> None:
    provider = CountingProvider(inside)
    # In place of MLflow's (or of the wrapper an earlier client of this process installed).
    databricks = (DatabricksRequestHeaderProvider, request_context.CachedContext)
    providers[:] = [provider, *[p for p in providers if not isinstance(p, databricks)]]
    request_context.install()
    request_context.install()  # a second install wraps nothing twice
    wrapped = [p for p in providers if isinstance(p, request_context.CachedContext)]
    assert len(wrapped) == 1 and wrapped[0].provider is provider
    headers = [registry.resolve_request_headers() for _ in range(5)]
    assert provider.asked == 1
    if inside:  # on Databricks its headers are worked out for each request, as before
        assert [h["job_run_id"] for h in headers] == ["1", "2", "3", "4", "5"]
    else:
        assert provider.headers_asked == 0 and all("job_run_id" not in h for h in headers)
    assert all("User-Agent" in h for h in headers)  # the other providers are untouched


def test_an_http_client_installs_it(providers: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from hpo.tracking.runs import open_client

    calls: list[None] = []
    monkeypatch.setattr(request_context, "install", lambda: calls.append(None))
    open_client("http://127.0.0.1:9")  # nothing is contacted to make a client
    assert calls == [None]
