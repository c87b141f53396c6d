"""README and docs/architecture.md stay true to the code: the layout tree names only paths that exist and
every folder of the repo and every core subpackage; the groups and jobs are those of the Definitions."""

from __future__ import annotations

import re
from fnmatch import fnmatch

import pytest

from recsys_platform.config import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
PATH_TOKEN = re.compile(r"^[\w.]+(/|\.py|\.md|\.toml|\.yaml)$")


def section(text: str, title: str) -> str:
    """The body of a `## title` section."""
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def layout_paths(tree: str) -> list[str]:
    """Paths a layout tree names: the leading path tokens of each line, nested by indentation (2 spaces per
    level under the folder above). Description text after the tokens is not read."""
    paths: list[str] = []
    parents: list[tuple[int, str]] = []  # (indent, folder)
    for line in tree.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        tokens = []
        for word in line.split():
            if not PATH_TOKEN.match(word):
                break
            tokens.append(word)
        if not tokens:
            continue  # a continuation line of a description
        while parents and parents[-1][0] >= indent:
            parents.pop()
        prefix = parents[-1][1] if parents else ""
        for token in tokens:
            paths.append(prefix + token)
        if len(tokens) == 1 and tokens[0].endswith("/"):
            parents.append((indent, prefix + tokens[0]))
    return paths


def readme_layout() -> list[str]:
    block = re.search(r"```\n(.*?)```", section(README.read_text(), "Layout"), re.S)
    assert block, "README's Layout section has no tree"
    return layout_paths(block.group(1))


def test_layout_parser_nests_by_indentation():
    tree = "a/   the a\n  b.py c.py   two files\n  d/   a folder\n"
    tree += "                  continued: e/ is not read\n    e/\nf/\n"
    assert layout_paths(tree) == ["a/", "a/b.py", "a/c.py", "a/d/", "a/d/e/", "f/"]


def test_every_path_the_readme_layout_names_exists():
    missing = [p for p in readme_layout() if not (PROJECT_ROOT / p).exists()]
    assert missing == []


def test_the_readme_layout_names_every_folder_and_core_subpackage():
    named = set(readme_layout())
    ignored = [line.strip().strip("/") for line in (PROJECT_ROOT / ".gitignore").read_text().splitlines()]
    folders = {
        f"{p.name}/"
        for p in PROJECT_ROOT.iterdir()
        if p.is_dir() and not p.name.startswith(".") and not any(fnmatch(p.name, g) for g in ignored if g)
    }
    core = PROJECT_ROOT / "recsys_platform"
    subpackages = {f"recsys_platform/{p.parent.name}/" for p in core.glob("*/__init__.py")}
    assert (folders | subpackages) - named == set()


@pytest.fixture(scope="module")
def defs():
    from orchestration.definitions import defs

    return defs


def test_readme_groups_are_the_definitions_groups(defs):
    text = section(README.read_text(), "Asset graph")
    listed = re.search(r"Groups in the UI.*?:(.*?)\n\n", text, re.S)
    assert listed
    groups = {
        name: set(re.split(r",\s*", members.replace("\n", " ").strip()))
        for name, members in re.findall(r"`(\w+)` \(([^)]*)\)", listed.group(1))
    }
    graph = defs.resolve_asset_graph()
    actual: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        actual.setdefault(graph.get(key).group_name, set()).add(key.to_user_string())
    assert groups == actual


def test_readme_names_every_job_sensor_and_schedule(defs):
    text = README.read_text()
    names = {job.name for job in defs.jobs}  # the declared jobs (not Dagster's implicit asset job)
    names |= {s.name for s in defs.sensors} | {s.name for s in defs.schedules}
    assert {n for n in names if f"`{n}`" not in text} == set()


def test_architecture_doc_names_existing_files():
    doc = (PROJECT_ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:recsys_platform|orchestration|assets|resources|sensors|config|tests)/[\w/.]+)`", doc))
    assert len(named) > 10
    assert sorted(p for p in named if not (PROJECT_ROOT / p).exists()) == []


def test_readme_documents_every_cli_command_and_http_endpoint():
    import typer

    from recsys_platform.cli import app
    from recsys_platform.serve.api import create_app

    def commands(group, prefix: str = "recsys") -> set[str]:
        found = set()
        for name, command in group.commands.items():
            found |= commands(command, f"{prefix} {name}") if hasattr(command, "commands") else {f"{prefix} {name}"}
        return found

    text = README.read_text()
    assert {c for c in commands(typer.main.get_command(app)) if f"`{c}" not in text} == set()
    api = create_app()
    try:
        routes = {f"{method.upper()} {path}" for path, ops in api.openapi()["paths"].items() for method in ops}
    finally:
        api.state.store.close()
    assert len(routes) >= 6
    assert {r for r in routes if r not in text} == set()


def test_the_readme_asset_graph_names_every_asset(defs):
    diagram = re.search(r"```\n(.*?)```", section(README.read_text(), "Asset graph"), re.S)
    assert diagram
    named = set(re.findall(r"\w+", diagram.group(1)))
    assets = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert assets - named == set()


def test_the_readme_configuration_table_names_every_variable_settings_reads():
    config = (PROJECT_ROOT / "recsys_platform" / "config.py").read_text()
    variables = set(re.findall(r'"((?:RECSYS|MLFLOW|DAGSTER)_[A-Z_]+)"', config))
    table = section(README.read_text(), "Configuration (environment variables only)")
    assert len(variables) > 15
    assert {v for v in variables if f"`{v}`" not in table} == set()
