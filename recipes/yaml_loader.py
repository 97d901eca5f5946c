"""Recipe YAML: safe, strict and bounded.

- safe: PyYAML's SafeLoader, so no tag builds a Python object;
- strict: a key given twice in one mapping is an error naming both lines (YAML's "last one wins"
  would silently drop the first value), and a file that is not UTF-8 is an error naming the line;
- bounded: aliases may expand to at most ``MAX_ALIAS_NODES`` nodes in all, so a "billion laughs"
  recipe fails in milliseconds instead of exhausting memory (nodes are counted, never built).

Every error is a ``yaml.MarkedYAMLError`` (or ``RecipeTextError``) whose mark gives the line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

# Nodes that aliases may add in one document. A recipe that reuses a backend block in a dozen
# places adds a few hundred; a 12-line alias bomb adds billions.
MAX_ALIAS_NODES = 20_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class RecipeTextError(ValueError):
    """A recipe file is not UTF-8 text; the message names the file and the line."""


class RecipeYAMLLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and counts what aliases expand to.

    It also reads ``2e-5`` as a float (YAML 1.1 wants ``2.0e-5``; every recipe author writes 2e-5).
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._alias_nodes = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None and node.end_mark is None:  # still being composed: an ancestor
                raise yaml.composer.ComposerError(
                    None, None, f"recursive alias *{event.anchor} (a value that contains itself)", event.start_mark
                )
            if node is not None:
                self._alias_nodes += self._expanded_size(node)
                if self._alias_nodes > MAX_ALIAS_NODES:
                    raise yaml.composer.ComposerError(
                        None, None,
                        f"aliases expand to more than {MAX_ALIAS_NODES} nodes (an alias bomb?); "
                        f"write the repeated values out or reuse fewer",
                        event.start_mark,
                    )
        return super().compose_node(parent, index)

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = (key_node.tag, key_node.value)
            line = key_node.start_mark.line + 1
            if key in first:
                raise yaml.composer.ComposerError(
                    None, None,
                    f"duplicate key {key_node.value!r} (first at line {first[key]}); YAML would keep only the last",
                    key_node.start_mark,
                )
            first[key] = line
        return node

    def _expanded_size(self, node: yaml.Node) -> int:
        """Nodes in ``node`` with every alias inside it expanded (memoised: linear in the document)."""
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._expanded_size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._expanded_size(k) + self._expanded_size(v) for k, v in node.value)
        self._sizes[id(node)] = size
        return size


RecipeYAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def compose_and_construct(text: str) -> tuple[Any, yaml.Node | None]:
    """The document's data and its node tree (for line numbers), parsed once."""
    loader = RecipeYAMLLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return data, node


def parse_yaml(text: str) -> Any:
    return compose_and_construct(text)[0]


def read_text(path: Path) -> str:
    """A recipe file's text; ``RecipeTextError`` naming the file and line when it is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RecipeTextError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the recipe as UTF-8"
        ) from None
