"""The YAML a recipe (and a command-line override value) may be written in, read and written.

Safe YAML (no tag runs Python), and stricter still:
* no anchors or aliases: a 400-byte file of nested aliases expands to billions of items
  the moment anything walks it (a type check's message, a deep copy), and a recipe gains
  nothing from them that copy-paste does not give;
* no duplicate keys: YAML's loaders keep the last of two `train:` sections silently, so
  half of a recipe would be ignored without a word;
* no nesting deeper than ``MAX_DEPTH``: PyYAML composes nodes recursively, and a thousand
  opening brackets end in a RecursionError.
Whatever it refuses is a one-line :class:`RefusedYAML`, never a traceback.
"""

from __future__ import annotations

from typing import Any

import yaml

from distill.errors import quote

MAX_DEPTH = 32  # a recipe's deepest value (a variant's overrides of a schedule) is ~5 levels


class RefusedYAML(Exception):
    """Well-formed YAML that a recipe may not use; the message says where and why. Not a
    ``yaml.YAMLError``: an override value that is not YAML is kept as a string, but one that
    is refused must stay refused."""


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors, aliases and duplicate mapping keys."""

    depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise RefusedYAML(f"line {line}: YAML anchors and aliases ({sign}"
                              f"{event.anchor[:40]}) are not allowed in a recipe; write the "
                              "value out in full.")
        if self.depth >= MAX_DEPTH:
            raise RefusedYAML(f"line {line}: values nested more than {MAX_DEPTH} levels deep "
                              "are not allowed in a recipe.")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue  # a complex key: SafeLoader refuses unhashable ones itself
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise RefusedYAML(f"duplicate key {quote(key, 60)} at line {line} "
                                      f"(first at line {lines[key]}); a mapping may name "
                                      "each key once.")
                lines[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """The value of ``text``; ``yaml.YAMLError`` if it is not YAML, :class:`RefusedYAML`
    if it uses what a recipe may not."""
    try:
        return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except ValueError as exc:  # a scalar Python refuses: an integer of over 4300 digits
        raise RefusedYAML(f"a value cannot be read: {quote(str(exc))[1:-1]}") from None


class _PlainDumper(yaml.SafeDumper):
    """Writes a value twice rather than as an alias, so what is written loads back."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_PlainDumper, sort_keys=False)
