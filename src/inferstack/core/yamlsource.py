"""Load YAML while remembering the line of every value, so errors can name it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inferstack.core.errors import DefinitionError, located

Location = tuple[str | int, ...]


@dataclass
class YamlDocument:
    path: Path
    data: Any
    lines: dict[Location, int] = field(default_factory=dict)

    def line_of(self, location: Location) -> int | None:
        """The line of the deepest part of `location` that exists in the file."""
        for end in range(len(location), -1, -1):
            line = self.lines.get(tuple(location[:end]))
            if line is not None:
                return line
        return None

    def problem(self, location: Location, message: str) -> str:
        return located(self.path, self.line_of(location), message)


def load_yaml(path: Path) -> YamlDocument:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError([located(path, None, f"cannot read: {exc}")]) from exc
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = exc.problem or exc.context or "invalid YAML"
        raise DefinitionError([located(path, line, f"invalid YAML: {reason}")]) from exc
    except yaml.YAMLError as exc:
        raise DefinitionError([located(path, None, f"invalid YAML: {exc}")]) from exc
    finally:
        loader.dispose()
    document = YamlDocument(path, data)
    if node is not None:
        _record_lines(node, (), document.lines)
    return document


def _record_lines(node: yaml.Node, location: Location, lines: dict[Location, int]) -> None:
    lines[location] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                _record_lines(value_node, (*location, str(key_node.value)), lines)
                # A key's own line is where a missing or extra field is best reported.
                lines[(*location, str(key_node.value))] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*location, index), lines)
