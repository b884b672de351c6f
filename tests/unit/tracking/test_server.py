"""hpo.tracking.server: how hpo runs an MLflow tracking server."""

from __future__ import annotations

from hpo.tracking.server import SERVER_ENV, server_env


def test_a_server_keeps_the_users_warning_filters() -> None:
    assert server_env({"HOME": "/h"}) == {"HOME": "/h", **SERVER_ENV}
    mine = server_env({"PYTHONWARNINGS": "error::DeprecationWarning"})
    assert mine["PYTHONWARNINGS"] == f"error::DeprecationWarning,{SERVER_ENV['PYTHONWARNINGS']}"
