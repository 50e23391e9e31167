"""YAML as ``yaml.safe_load`` reads it, less what tltool's YAML inputs (recipes, augmentation files) never need and
a hostile file can use: aliases, deep nesting and keys given twice; and YAML 1.1's numbers no one means (``010``
read as 8)."""
from __future__ import annotations

import re
from typing import Any

import yaml

MAX_DEPTH = 32  # nesting levels a file or a --set value may have (a recipe needs four, an augmentation file ~ten)


_PLAIN_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")


class _HardenedLoader(yaml.SafeLoader):
    """Aliases (``*name``) are refused: eight lines that each repeat the one above ten times stand for 10**8 values,
    and checking them hung ``tltool run`` while its memory grew. Nesting deeper than :data:`MAX_DEPTH` is refused:
    the composer recurses once per level, so ``[[[...]]]`` 20,000 deep was a RecursionError."""

    what = "this file"  # named in the alias refusal, with what to write instead
    alias_hint = "write the value out"

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """A key given twice in one mapping is refused: YAML would keep the last silently (``out: a`` then
        ``out: b`` wrote to b)."""
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key: the type checks of the caller name it
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A value its constructor cannot make is a YAML error at its place: PyYAML's own checks raise ValueError
        (``2020-13-45`` read as a date, ``!!int abc``, an integer of more than 4300 digits), which escaped as a
        traceback."""
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(None, None, f"the value {str(node.value)[:40]!r} cannot be read "
                                                    f"({str(exc)[:120]})",
                                                    node.start_mark) from None

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """Only plain decimals: YAML 1.1 reads ``010`` as 8 (octal), ``0x10`` as 16, ``1:30`` as 90 and ``1_0`` as
        10, so a seed padded with a zero became another seed without a word."""
        text = str(node.value)
        if not _PLAIN_INT.fullmatch(text):
            raise yaml.constructor.ConstructorError(
                None, None, f"{text!r} is not a plain decimal number (YAML would read it as "
                f"{super().construct_yaml_int(node)}); write it without a leading zero, 0x, 0o, 0b, _ or :, or quote "
                "it as text", node.start_mark)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        """``1:30.5`` (sexagesimal: 90.5) and ``1_000.5``: YAML 1.1 reads them as numbers no one wrote."""
        text = str(node.value)
        if "_" in text or ":" in text:
            raise yaml.constructor.ConstructorError(
                None, None, f"{text!r} is not a plain decimal number (YAML would read it as "
                f"{super().construct_yaml_float(node)}); write it without _ or :, or quote it as text",
                node.start_mark)
        return super().construct_yaml_float(node)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, f"an alias (*{event.anchor}) is not allowed in "
                                              f"{self.what}; {self.alias_hint}", event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                              event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_HardenedLoader.add_constructor("tag:yaml.org,2002:int", _HardenedLoader.construct_yaml_int)
_HardenedLoader.add_constructor("tag:yaml.org,2002:float", _HardenedLoader.construct_yaml_float)


def read_yaml(text: str, what: str = _HardenedLoader.what, alias_hint: str = _HardenedLoader.alias_hint) -> Any:
    """``text`` as YAML (see :class:`_HardenedLoader`); a :class:`yaml.YAMLError` says what and where in one line.
    ``what`` names the kind of file, ``alias_hint`` what to write instead of an alias."""
    loader = _HardenedLoader(text)
    loader.what, loader.alias_hint = what, alias_hint
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise yaml.YAMLError(f"{where}{exc.problem or exc.context}") from None
    finally:
        loader.dispose()
