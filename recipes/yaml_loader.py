"""Recipe YAML: safe, strict and bounded.

- safe: PyYAML's SafeLoader, so no tag builds a Python object;
- strict: a key given twice in one mapping is an error naming both lines (YAML's "last one wins"
  would silently drop the first value), and a file that is not UTF-8 is an error naming the line;
- bounded: aliases may expand to at most ``MAX_ALIAS_NODES`` nodes in all, so a "billion laughs"
  recipe fails in milliseconds instead of exhausting memory (nodes are counted, never built).

Every error is a ``yaml.MarkedYAMLError`` (or ``RecipeTextError``) whose mark gives the line.
A Japanese, Chinese or Korean input method in full-width mode types look-alikes of YAML's ASCII marks
(``：`` for ``:``, U+3000 for a space); :func:`full_width_slip` finds the one that broke a recipe.
"""

from __future__ import annotations

import re
import unicodedata
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


# What an input method in full-width mode types for ASCII: U+3000 for a space, U+FF01-U+FF5E for the rest.
_FULL_WIDTH = re.compile(r"[\u3000\uff01-\uff5e]")
# Where YAML needs an ASCII mark, its look-alike breaks the structure; elsewhere (a Japanese prompt's `：`, an
# ideographic space between words) it is text. Structure: the indentation; a full-width space after `:` or `-`; a
# colon before the line's first ASCII one (`seed： 42`); a dash or `#` opening the line; any bracket or brace.
_STRUCTURAL = re.compile(r"^[ \t]*\u3000|[:\-]\u3000|^[^:]*\uff1a|^\s*[\uff0d\uff03]|\s\uff03|[\uff5b\uff5d\uff3b\uff3d]")


def full_width_note(text: str) -> str | None:
    """What a full-width look-alike in ``text`` (a key, a value) is, and the fix, for "line 5 ..." or "the key ...":
    ``is indented with U+3000 IDEOGRAPHIC SPACE; indent with ASCII spaces``,
    ``holds U+FF1A FULLWIDTH COLON ('：'); write the ASCII ':'``; None when it holds none."""
    found = _FULL_WIDTH.search(text)
    if found is None:
        return None
    indent = text[: len(text) - len(text.lstrip())]
    return _note(found.group(), indented="\u3000" in indent)


def full_width_slip(text: str, upto: int | None = None) -> tuple[int, str] | None:
    """The line of ``text`` (1-based, at most ``upto``: a YAML error is found at or after its cause) whose full-width
    look-alike most likely broke the YAML, and the note for it (:func:`full_width_note`'s words); None if no line
    holds one where YAML needs ASCII. The nearest to ``upto`` wins: one that parsed and read on is text."""
    lines = text.splitlines()[:upto]
    for number in range(len(lines), 0, -1):
        line = lines[number - 1]
        code = "" if line.lstrip().startswith("#") else line.split(" #", 1)[0]
        found = _STRUCTURAL.search(code)
        if found is not None:
            mark = _FULL_WIDTH.search(found.group())
            return number, _note(mark.group(), indented=not found.group().strip())  # only spaces matched
    return None


def _note(mark: str, *, indented: bool) -> str:
    name = f"U+{ord(mark):04X} {unicodedata.name(mark)}"
    if indented:
        return f"is indented with {name}; indent with ASCII spaces"
    if mark.isspace():
        return f"holds {name}; write an ASCII space"
    return f"holds {name} ('{mark}'); write the ASCII {unicodedata.normalize('NFKC', mark)!r}"
