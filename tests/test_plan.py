"""The plan: which children a config asks for, and which config each child reads (its `SECTIONS`)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

from streamd import config as config_module
from streamd.plan import plan_children

# Imported by children for a name or two, but the code reading config there runs in the supervisor.
SUPERVISOR_SIDE = {"streamd.config", "streamd.children"}


def streamd_modules(root: str) -> dict[str, ast.Module]:
    """The parsed source of `root` and of every streamd module it imports, lazily or not."""
    seen: dict[str, ast.Module] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen or name in SUPERVISOR_SIDE or not name.startswith("streamd"):
            continue
        try:
            spec = importlib.util.find_spec(name)
        except ImportError:
            spec = None  # `from streamd.x import name` names a function, not a module
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        tree = seen[name] = ast.parse(Path(spec.origin).read_text())
        package = (name if spec.origin.endswith("__init__.py") else name.rpartition(".")[0]).split(".")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                todo.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                # `from .offsets import x` in a package (the consumer may become one) counts too.
                base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
                module = ".".join(part for part in (base, node.module) if part)
                todo.append(module)
                todo.extend(f"{module}.{alias.name}" for alias in node.names)
    return seen


def config_reads(root: str) -> set[str]:
    """Every `config.<section>` ("section") and `config.<section>.<key>` ("section.key") the code writes."""
    sections = set(config_module.section_names())
    found = set()
    for tree in streamd_modules(root).values():
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr in sections):
                continue
            base = node.value
            if not ((isinstance(base, ast.Name) and base.id == "config") or getattr(base, "attr", None) == "config"):
                continue
            parent = parents.get(node)
            found.add(f"{node.attr}.{parent.attr}" if isinstance(parent, ast.Attribute) else node.attr)
    return found


def undeclared(reads: set[str], declared: frozenset[str]) -> set[str]:
    return {read for read in reads if read not in declared and read.split(".")[0] not in declared}


@pytest.mark.parametrize(
    "module", ["streamd.producer", "streamd.consumer", "streamd.analyzer", "streamd.retention", "streamd.api.server"]
)
def test_every_child_declares_each_config_section_its_code_reads(module):
    declared = importlib.import_module(module).SECTIONS
    assert not undeclared(config_reads(module), declared), f"{module}.SECTIONS misses what its code reads"


def test_the_section_scan_sees_a_key_read_deep_inside_a_child():
    assert "consumer.group" in config_reads("streamd.api.server"), "the API reads the group for lag"
    assert undeclared({"consumer.group", "kafka.topic"}, frozenset({"kafka"})) == {"consumer.group"}


def planned(config: config_module.Config) -> dict[str, frozenset[str]]:
    return {spec.name: spec.sections for spec in plan_children(config)}


@pytest.mark.parametrize(
    ("change", "restarted"),
    [
        # The analyzer runs the consumers' pipeline (consumer.schema and the rest), so it reads that section too.
        ({"consumer": {"group": "other"}}, {"consumer-1", "consumer-2", "analyzer", "api"}),
        ({"consumer": {"batch_size": 7}}, {"consumer-1", "consumer-2", "analyzer"}),
        ({"analytics": {"windows": ["5m"]}}, {"analyzer", "api"}),
        ({"supervisor": {"graceful_timeout": 9}}, {"producer", "api"}),
        ({"supervisor": {"backoff_max": 9}}, set()),
        ({"consumer": {"processes": 5}}, set()),
    ],
)
def test_a_reload_restarts_exactly_the_children_that_read_what_changed(change, restarted):
    before = config_module.from_mapping({})
    changed = before.changed_settings(config_module.from_mapping(change))
    assert {name for name, sections in planned(before).items() if sections & changed} == restarted


def test_the_analyzer_runs_after_the_consumers_when_analytics_is_enabled():
    assert list(planned(config_module.from_mapping({}))) == ["producer", "consumer-1", "consumer-2", "analyzer", "api"]
    assert "analyzer" not in planned(config_module.from_mapping({"analytics": {"enabled": False}}))


def test_the_retention_child_runs_only_when_a_retention_is_set():
    assert "retention" not in planned(config_module.from_mapping({}))
    kept = planned(config_module.from_mapping({"mongodb": {"retention": "7d"}}))
    assert "retention" in kept and "mongodb" in kept["retention"]
