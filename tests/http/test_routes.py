"""The route table: every route of the running app comes from routes.ROUTES, and only there;
the HTTP modules import neither app.py nor each other in a cycle."""

from __future__ import annotations

import ast
import re
from graphlib import TopologicalSorter
from pathlib import Path

import pytest

import csvcompress
from csvcompress.http.routes import ROUTES
from tests.conftest import ServiceFactory

PACKAGE = Path(csvcompress.__file__).parent
HTTP = PACKAGE / "http"
# A route's regex part ("{key:.+}") is not part of its canonical template ("{key}").
REGEX_PART = re.compile(r":[^{}]+\}")
ADDS_ROUTES = re.compile(r"\.add_(?:get|post|put|patch|delete|head|route|routes|static|view)\(")


def _declared() -> set[tuple[str, str]]:
    declared = set()
    for route in ROUTES:
        template = REGEX_PART.sub("}", route.path)
        declared.add((route.method, template))
        if route.method == "GET":
            declared.add(("HEAD", template))
    return declared


@pytest.mark.parametrize("backend", ["local", "null"])
async def test_every_route_of_the_app_comes_from_the_table(
    create_service: ServiceFactory, backend: str
) -> None:
    service = await create_service(storage={"backend": backend})
    served = {
        (route.method, route.resource.canonical)
        for route in service.runner.app.router.routes()
        if route.resource is not None
    }
    assert served == _declared()


def test_routes_are_declared_nowhere_else() -> None:
    sources = [*HTTP.glob("*.py"), PACKAGE / "app.py"]
    adding = [path.name for path in sources if ADDS_ROUTES.search(path.read_text())]
    assert adding == ["routes.py"]


def _http_imports(path: Path) -> set[str]:
    """The csvcompress modules `path` imports, as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("csvcompress.")}


def test_http_modules_import_neither_the_app_nor_each_other_in_a_cycle() -> None:
    modules = {path.stem: _http_imports(path) for path in HTTP.glob("*.py")}
    for name, imports in modules.items():
        assert "csvcompress.app" not in imports, name
    edges = {
        name: {other for other in modules if f"csvcompress.http.{other}" in imports}
        for name, imports in modules.items()
    }
    TopologicalSorter(edges).prepare()  # raises CycleError on a cycle
    assert edges["keys"] == set()
