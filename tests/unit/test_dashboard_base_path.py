"""Where a mounted dashboard finds its own prefix, for the links it renders."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from katana.task_queue.web._views import base_path


def request(path: str, root_path: str = "", **path_params: str) -> Request:
    scope = {"type": "http", "path": path, "root_path": root_path, "path_params": path_params}
    return Request(scope)


@pytest.mark.parametrize(
    ("path", "root_path", "route_path", "params", "base"),
    [
        ("/", "", "/", {}, ""),
        ("/katana/", "", "/", {}, "/katana"),
        ("/katana/tasks/abc", "", "/tasks/{task_id}", {"task_id": "abc"}, "/katana"),
        ("/a/b/_/table/tasks", "", "/_/table/{view_key}", {"view_key": "tasks"}, "/a/b"),
        # root_path set by a proxy or an outer Mount: included in the path (Starlette today)
        ("/proxy/katana/workers", "/proxy", "/workers", {}, "/proxy/katana"),
        # ... or not (older Starlette passed mounted apps the rest of the path only)
        ("/katana/workers", "/proxy", "/workers", {}, "/proxy/katana"),
    ],
)
def test_the_prefix_is_the_path_minus_the_routes_own_path(
    path: str, root_path: str, route_path: str, params: dict[str, str], base: str
) -> None:
    assert base_path(request(path, root_path, **params), route_path) == base
