"""The import graph keeps the house plan (docs/architecture.md): the core never imports the Dagster shell,
dagster, the CLI, dev tools, benchmarks or tests; no import cycles among core modules; the shell never
imports the CLI, dev tools, benchmarks or tests.

Every import statement counts, including the ones inside functions (the lazy imports of heavy libraries):
a lazy import of the shell is still a dependency on it. The contract functions are checked on a synthetic
graph too, so a broken contract cannot pass by finding nothing.

The environment has one reader, `Settings` (recsys_platform/config.py), called by the composition roots, which
pass the settings in: every other access to os.environ and every other `Settings.from_env()` is listed with its
reason, and the lists are checked on synthetic files the same way."""

from __future__ import annotations

import grimp
import pytest

CORE_PACKAGE = "recsys_platform"
SHELL = ("orchestration", "assets", "resources", "sensors")
CLI = "recsys_platform.cli"
DEV = "recsys_platform.dev"
# Top-level names the core may never import (external ones included: grimp keeps them as one node each).
NOT_FOR_THE_CORE = (*SHELL, "dagster", "dagster_aws", "dagster_celery", "dagster_k8s", "benchmarks", "tests")
NOT_FOR_THE_SHELL = ("benchmarks", "tests")


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def core_modules(graph: grimp.ImportGraph) -> set[str]:
    """Every module of the core package except the CLI and the dev tools."""
    return {
        m
        for m in graph.modules
        if _within(m, CORE_PACKAGE) and not _within(m, CLI) and not _within(m, DEV) and not graph.is_module_squashed(m)
    }


def forbidden_imports(
    graph: grimp.ImportGraph, importers: set[str], forbidden_tops: tuple[str, ...], forbidden_modules: tuple[str, ...]
) -> list[str]:
    """`importer -> imported (line n)` for every direct import of a forbidden top-level name or module."""
    found = []
    for importer in sorted(importers):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if imported.split(".")[0] in forbidden_tops or any(_within(imported, f) for f in forbidden_modules):
                lines = [d["line_number"] for d in graph.get_import_details(importer=importer, imported=imported)]
                found.append(f"{importer} -> {imported} (line {', '.join(map(str, lines)) or '?'})")
    return found


def import_cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """The strongly connected components (more than one module) of the direct imports among `modules`."""
    edges = {m: sorted(n for n in graph.find_modules_directly_imported_by(m) if n in modules) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(root: str) -> None:  # Tarjan's algorithm, iterative (no recursion limit)
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(edges[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return sorted(cycles)


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(CORE_PACKAGE, *SHELL, include_external_packages=True, cache_dir=None)


def test_the_core_never_imports_the_shell_dagster_the_cli_dev_tools_benchmarks_or_tests(graph):
    core = core_modules(graph)
    assert len(core) > 50  # the whole core was found, not an empty set that trivially passes
    assert forbidden_imports(graph, core, NOT_FOR_THE_CORE, (CLI, DEV)) == []


def test_the_shell_never_imports_the_cli_dev_tools_benchmarks_or_tests(graph):
    shell = {m for m in graph.modules if m.split(".")[0] in SHELL}
    assert {m.split(".")[0] for m in shell} == set(SHELL)
    assert forbidden_imports(graph, shell, NOT_FOR_THE_SHELL, (CLI, DEV)) == []


def test_assets_resources_and_sensors_never_import_the_root_that_merges_them(graph):
    parts = {m for m in graph.modules if m.split(".")[0] in ("assets", "resources", "sensors")}
    assert forbidden_imports(graph, parts, ("orchestration",), ()) == []


def test_the_cli_imports_the_shell_only_through_orchestration(graph):
    assert forbidden_imports(graph, {CLI}, ("assets", "resources", "sensors", "benchmarks", "tests"), ()) == []


def test_no_import_cycles_among_core_modules(graph):
    assert import_cycles(graph, core_modules(graph)) == []


def _synthetic_graph() -> grimp.ImportGraph:
    graph = grimp.ImportGraph()
    for module in (
        "recsys_platform",
        "recsys_platform.ingest.landing",
        "recsys_platform.push.queue",
        "recsys_platform.push.sqlite_queue",
        "recsys_platform.cli",
        "recsys_platform.dev.generator",
        "orchestration.definitions",
        "assets.serving",
    ):
        graph.add_module(module)
    graph.add_module("dagster", is_squashed=True)
    return graph


def _add(graph: grimp.ImportGraph, importer: str, imported: str, line: int) -> None:
    graph.add_import(importer=importer, imported=imported, line_number=line, line_contents=f"import {imported}")


def test_the_contracts_catch_what_they_forbid():
    """Adding a forbidden import or a cycle makes the contracts above fail."""
    graph = _synthetic_graph()
    core = core_modules(graph)
    assert core == {
        "recsys_platform",
        "recsys_platform.ingest.landing",
        "recsys_platform.push.queue",
        "recsys_platform.push.sqlite_queue",
    }
    assert forbidden_imports(graph, core, NOT_FOR_THE_CORE, (CLI, DEV)) == []
    assert import_cycles(graph, core) == []
    # allowed: the CLI and the shell import the core, the CLI imports dev tools and the root
    _add(graph, "recsys_platform.cli", "recsys_platform.dev.generator", 3)
    _add(graph, "recsys_platform.cli", "orchestration.definitions", 4)
    _add(graph, "assets.serving", "recsys_platform.ingest.landing", 5)
    assert forbidden_imports(graph, core, NOT_FOR_THE_CORE, (CLI, DEV)) == []
    # forbidden: the core importing dagster, the shell, the CLI or a dev tool
    _add(graph, "recsys_platform.ingest.landing", "dagster", 7)
    _add(graph, "recsys_platform.ingest.landing", "assets.serving", 8)
    _add(graph, "recsys_platform.push.queue", "recsys_platform.dev.generator", 9)
    _add(graph, "recsys_platform.push.queue", "recsys_platform.cli", 10)
    assert forbidden_imports(graph, core, NOT_FOR_THE_CORE, (CLI, DEV)) == [
        "recsys_platform.ingest.landing -> assets.serving (line 8)",
        "recsys_platform.ingest.landing -> dagster (line 7)",
        "recsys_platform.push.queue -> recsys_platform.cli (line 10)",
        "recsys_platform.push.queue -> recsys_platform.dev.generator (line 9)",
    ]
    # a factory in the interface module that imports the backends, which import the interface: a cycle
    _add(graph, "recsys_platform.push.queue", "recsys_platform.push.sqlite_queue", 11)
    _add(graph, "recsys_platform.push.sqlite_queue", "recsys_platform.push.queue", 2)
    assert import_cycles(graph, core) == [["recsys_platform.push.queue", "recsys_platform.push.sqlite_queue"]]


# Who may touch os.environ besides `Settings` (recsys_platform/config.py), and why. Each entry is an exception
# with a reason, not a setting: a setting of the platform is a field of `Settings`, read in config.py.
ENVIRONMENT_OUTSIDE_SETTINGS = {
    # Writes a default for the OpenMP runtime before LightGBM loads it.
    "recsys_platform/__init__.py",
    # Writes DAGSTER_HOME (Dagster reads it itself) and RECSYS_RANKER_THREADS for the runs the CLI starts in its
    # own process.
    "recsys_platform/cli.py",
    # MLflow's own MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, saved and restored around its client, and the
    # environment of the MLflow server subprocess.
    "recsys_platform/model/registry.py",
    # Writes GX_ANALYTICS_ENABLED=False for Great Expectations.
    "recsys_platform/ingest/quality.py",
    # AWS_REGION / AWS_DEFAULT_REGION, the AWS SDK's own variables, handed to polars' object store.
    "recsys_platform/deploy_profile.py",
    # Resolves a relative base_dir under DAGSTER_HOME as Dagster's own SQLite storage does.
    "orchestration/instance_storage.py",
}
# Dev tools and the quality benchmark build the environments of the subprocesses they start.
NOT_THE_PRODUCT = ("recsys_platform/dev/", "recsys_platform/quality_benchmark/")
# `os.environ`, `os.getenv`, `os.putenv`, `os.unsetenv`, or the same names imported from os.
ENVIRONMENT_ACCESS = r"\bos\.(environ|getenv|putenv|unsetenv)\b|\bfrom\s+os\s+import\b[^\n]*\b(environ|getenv|putenv)\b"

# Who may call `Settings.from_env()`, and why. The composition roots read the settings once and pass them on
# (to resources, the app's state, the functions they call); the rest are defaults for direct callers (tests,
# scripts) of functions whose product callers pass what they need, or reads still to be threaded through.
SETTINGS_READERS = {
    "recsys_platform/cli.py": "every command resolves the settings once (_prepare_environment)",
    "recsys_platform/serve/api.py": "create_app: the factory the server calls with no arguments, in each worker",
    "orchestration/definitions.py": "build_definitions without settings",
    "orchestration/environment.py": "executor_from_env without settings",
    "assets/partitions.py": "settings_at_load: Dagster needs the partitions when the assets are imported",
    "sensors/landing.py": "landing_sensor_for without running= (the root passes its settings' choice)",
    "recsys_platform/deploy_profile.py": "executor_settings_from_env, for callers without settings",
    "recsys_platform/lifecycle.py": "load_retention without a path (the retention asset's resources have none)",
    "recsys_platform/ingest/landing.py": "the S3 client of an s3:// landing zone opened without one",
    "recsys_platform/ingest/ingestion.py": "app_launch, read deep in validate_events (API intake and ingestion)",
    "recsys_platform/alerts.py": "notify without a url (run_failure_alerts is a module-level sensor)",
}
SETTINGS_READ = r"\bSettings\.from_env\("


@pytest.fixture(scope="module")
def product_files() -> dict[str, str]:
    """{path: text} of every Python file of the core and the shell, except config.py and what is not the product."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = {}
    for folder in (CORE_PACKAGE, *SHELL):
        for path in (root / folder).rglob("*.py"):
            name = path.relative_to(root).as_posix()
            if name != "recsys_platform/config.py" and not name.startswith(NOT_THE_PRODUCT):
                files[name] = path.read_text()
    return files


def files_matching(files: dict[str, str], pattern: str) -> set[str]:
    """The paths of `files` whose text matches `pattern`."""
    import re

    return {name for name, text in files.items() if re.search(pattern, text)}


def test_settings_is_the_only_reader_of_the_environment(product_files):
    assert len(product_files) > 100
    assert files_matching(product_files, ENVIRONMENT_ACCESS) == ENVIRONMENT_OUTSIDE_SETTINGS


def test_settings_are_read_by_the_composition_roots_and_passed_in(product_files):
    assert files_matching(product_files, SETTINGS_READ) == set(SETTINGS_READERS)


def test_the_environment_contracts_catch_what_they_forbid():
    """A new read of the environment, or of Settings, outside the lists above makes the two tests above fail."""
    files = {
        "recsys_platform/a.py": "import os\nvalue = os.environ.get('RECSYS_X', '')",
        "recsys_platform/b.py": "from os import getenv\nvalue = getenv('RECSYS_X')",
        "assets/c.py": "import os\nflag = os.getenv('RECSYS_Y') == '1'",
        "sensors/d.py": "from recsys_platform.config import Settings\nurl = Settings.from_env().lake_url",
        "resources/e.py": "def f(settings):\n    return settings.lake_url  # the environment, as Settings read it",
    }
    assert files_matching(files, ENVIRONMENT_ACCESS) == {"recsys_platform/a.py", "recsys_platform/b.py", "assets/c.py"}
    assert files_matching(files, SETTINGS_READ) == {"sensors/d.py"}
