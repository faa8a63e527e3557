"""Reading config.yaml: where it is found, and its text parsed as YAML within bounds, unvalidated.

Validation, defaults and env overrides are config.py's job; this module only turns a file into plain
data or a ConfigError, and keeps any file, even a hostile one, from taking the process that reads it.

A key written twice in one mapping (two `api:` blocks) is refused: PyYAML would keep the last silently.
The check is a few lines in the loader subclass the bounds already need, rather than a library:
ruamel.yaml refuses duplicates but reads YAML 1.2, where `yes` and `on` are strings, which would turn
working configs (`enabled: yes`) into errors, and its loader would need these bounds written again;
yamllint's key-duplicates rule would parse every file a second time with its own, unbounded, pass.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

SEARCH_PATHS = (Path("config.yaml"), Path("/etc/streamd/config.yaml"))
# A streamd config is a few kilobytes; the bounds keep any file, even a hostile one, from taking the
# supervisor's stack or memory while it reloads (PyYAML's composer recurses once per nesting level,
# and merge keys can double a mapping per level).
MAX_FILE_BYTES = 256 << 10  # parsing this much takes the supervisor ~2 s at worst; 1 MiB took 7 s
MAX_NESTING = 50
MAX_MERGED_KEYS = 10_000


class ConfigError(Exception):
    """A user-fixable problem in config.yaml or the environment; the message is one sentence."""


def find_config_path(explicit: str | os.PathLike | None) -> Path | None:
    """-c wins; else ./config.yaml; else /etc/streamd/config.yaml; else None (built-in defaults)."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file; pass an existing file with -c.")
        return path.absolute()
    for candidate in SEARCH_PATHS:
        if candidate.is_file():
            return candidate.absolute()
    return None


def read_file(source: Path) -> Any:
    """The file as plain YAML data, unvalidated (None when it holds nothing); bad content is a ConfigError."""
    try:
        with open(source, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot be read ({exc.strerror}).") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: is larger than {MAX_FILE_BYTES >> 10} KiB; a streamd config is a few lines.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{source}: line {line} is not UTF-8 text; save the file as UTF-8.") from None
    try:
        return parse_yaml(text)
    except DuplicateKey as exc:
        raise ConfigError(f"{source}: {exc.sentence}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}:{where} is not valid YAML ({one_line(exc.problem or exc)}).") from None
    except Exception as exc:
        # Everything here comes from the file's content (PyYAML raises ValueError for 2024-13-01,
        # KeyError for `!!bool maybe`, RecursionError past our bounds): the user's to fix, not a bug.
        raise ConfigError(f"{source}: is not valid YAML ({one_line(f'{type(exc).__name__}: {exc}')}).") from None


def parse_yaml(text: str) -> Any:
    """yaml.safe_load with bounds on nesting and merge keys; raises yaml.YAMLError past them."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping holds the same key twice; `sentence` names it and both lines."""

    def __init__(self, key: Any, first: yaml.Mark, second: yaml.Mark) -> None:
        self.sentence = (
            f"key {clipped(repr(key))} is written twice in the same mapping, at lines {first.line + 1} and "
            f"{second.line + 1}; keep one (YAML would silently use the last)."
        )
        super().__init__(None, None, self.sentence, second)


class _BoundedLoader(yaml.SafeLoader):
    depth = 0

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        # Merge keys (<<) are left out: a key written beside a merge overrides the merged one, by design.
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            try:
                if key in seen:
                    raise DuplicateKey(key, seen[key], key_node.start_mark)
                seen[key] = key_node.start_mark
            except TypeError:
                continue  # unhashable: the constructor below refuses it with its own sentence
        return super().construct_mapping(node, deep)

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_NESTING} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Count what the merge would add before PyYAML builds it: sources are flattened first (each
        # checked by this same bound), and flattening is idempotent, so this costs one pass.
        merged = len(node.value)
        merges = False
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merges = True
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    if isinstance(source, yaml.MappingNode):
                        self.flatten_mapping(source)
                        merged += len(source.value)
        if merges and merged > MAX_MERGED_KEYS:
            raise yaml.constructor.ConstructorError(
                None, None, f"merge keys (<<) expand to more than {MAX_MERGED_KEYS} keys", node.start_mark
            )
        super().flatten_mapping(node)


def one_line(problem: object) -> str:
    return clipped(" ".join(str(problem).split()))


def clipped(text: str, limit: int = 80) -> str:
    """Keep a sentence one sentence when the file holds a megabyte-long value."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
