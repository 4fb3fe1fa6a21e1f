"""Read a CRDS mapping as data: its header, and the files it names.

A mapping (.pmap, .imap, .rmap) is written in a small subset of Python:
``header = {...}``, ``selector = Match({...})`` and an optional ``comment``.
The crds client executes it; crds-job never does. We parse it with ``ast``,
take the header as a literal, and walk only the *values* of the selector
(dict keys are match patterns, not files), through the selector calls CRDS
defines. Anything else is refused, and so is every name that is not a plain
base name or that breaks the pmap -> imap -> rmap -> reference hierarchy.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from . import names

#: The selector classes a mapping may call (crds/core/selectors.py).
SELECTOR_CALLS = frozenset(
    {"Match", "UseAfter", "VersionAfter", "SelectVersion", "ClosestTime", "GeometricallyNearest", "Bracket"}
)

#: What each kind of mapping may name: one level down, never sideways or deeper.
CHILD_KIND = {"pmap": "imap", "imap": "rmap", "rmap": "reference"}

#: The header's "mapping" field for each kind.
HEADER_TYPE = {"pmap": "PIPELINE", "imap": "INSTRUMENT", "rmap": "REFERENCE"}

#: Real selectors nest a few levels (Match > UseAfter > ...); far deeper is hostile.
MAX_SELECTOR_DEPTH = 32

#: An instrument's name (wfi, wfc3, nircam...): it becomes a folder of the cache (``instrument`` layout).
INSTRUMENT = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")


class MappingError(ValueError):
    """A mapping that is not a well-formed CRDS mapping of the expected kind."""


@dataclass(frozen=True)
class Mapping:
    """A parsed mapping: what it is, and which files it names (in order, no repeats)."""

    name: str
    kind: str  # pmap, imap, rmap
    header: dict
    children: tuple[str, ...]

    @property
    def instrument(self) -> str:
        """The instrument of an imap or rmap, lower case ("" for a pmap)."""
        return str(self.header.get("instrument", "")).lower()


def header_checksum(text: str) -> str:
    """The sha1 a mapping's header carries: of its text minus every line with "sha1sum".

    This is how the crds client checks a mapping before it uses it; it is not
    the sha1 of the file, which the bucket's download metadata gives.
    """
    kept = "".join(line for line in text.splitlines(True) if "sha1sum" not in line)
    return hashlib.sha1(kept.encode("utf-8")).hexdigest()


def _surviving_values(node: ast.Dict, fold_case: bool) -> Iterator[ast.AST]:
    """The values of a dict literal that its evaluation keeps: a repeated key keeps only its last.

    The crds client runs the mapping, so a value shadowed by a later equal key
    (by Python's equality: 1 == 1.0) is one it can never select; real rmaps
    have such repeats. A pmap's or imap's keys it also folds to lower case
    (``rmap.MappingSelectionsDict``). A key that is not a literal keeps its value.
    """
    surviving: dict[object, ast.AST] = {}
    for key, value in zip(node.keys, node.values, strict=True):
        if key is None:
            raise MappingError(f"dict unpacking at line {node.lineno}")
        try:
            literal = ast.literal_eval(key)
            hash(literal)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            literal = object()  # equal to no other key
        surviving[literal] = value  # Python's literal first: a repeat keeps its first place, its last value
    if fold_case:  # then the client's folding, over that dict in its order: the later place wins
        surviving = {key.lower() if isinstance(key, str) else key: value for key, value in surviving.items()}
    return iter(surviving.values())


def _selector_values(node: ast.AST, depth: int = 0, fold_case: bool = False) -> Iterator[str]:
    """Yield the strings a selector can select, refusing every other construct.

    ``fold_case``: the selector is a pmap's or imap's dict, whose keys crds folds to lower case.
    """
    if depth > MAX_SELECTOR_DEPTH:
        raise MappingError(f"selector nested deeper than {MAX_SELECTOR_DEPTH} levels")
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):
            yield node.value
        elif node.value is not None and not isinstance(node.value, (int, float)):
            raise MappingError(f"unexpected constant {node.value!r} at line {node.lineno}")
    elif isinstance(node, ast.Dict):
        for value in _surviving_values(node, fold_case):
            yield from _selector_values(value, depth + 1)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in SELECTOR_CALLS:
            raise MappingError(f"call of something other than a CRDS selector at line {node.lineno}")
        if node.keywords:
            raise MappingError(f"keyword arguments to {node.func.id} at line {node.lineno}")
        for arg in node.args:
            yield from _selector_values(arg, depth + 1)
    elif isinstance(node, (ast.Tuple, ast.List)):
        for element in node.elts:
            yield from _selector_values(element, depth + 1)
    else:
        line = getattr(node, "lineno", "?")
        raise MappingError(f"{type(node).__name__} is not allowed in a selector (line {line})")


def _sections(name: str, text: str) -> tuple[dict, ast.AST]:
    try:
        tree = ast.parse(text, filename=name, mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise MappingError(f"not parseable: {type(exc).__name__}: {exc}") from None
    found: dict[str, ast.AST] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # a docstring, say: the client's verifier lets a bare expression pass, and it names nothing
        if not (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
            and statement.targets[0].id in ("header", "selector", "comment")
        ):
            line = getattr(statement, "lineno", "?")
            raise MappingError(f"only header, selector and comment may be defined (line {line})")
        section = statement.targets[0].id
        if section in found:
            raise MappingError(f"{section} is defined twice")
        found[section] = statement.value
    if "header" not in found or "selector" not in found:
        raise MappingError("header or selector is missing")
    try:
        header = ast.literal_eval(found["header"])
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        raise MappingError("header is not a literal dict") from None
    if not isinstance(header, dict):
        raise MappingError("header is not a dict")
    return header, found["selector"]


def parse(name: str, text: str, observatory: str, check_header_sum: bool = True) -> Mapping:
    """Parse mapping ``name`` and return what it names, or raise MappingError.

    ``check_header_sum`` mirrors the client's own check (it refuses a mapping
    whose header sha1sum is wrong unless CRDS_IGNORE_MAPPING_CHECKSUM is set),
    so a broken mapping stops the warm instead of the calibration.
    """
    kind = names.kind_of(name)
    if kind == "reference":
        raise MappingError(f"{name} is not a mapping name")
    header, selector = _sections(name, text)
    if str(header.get("mapping", "")).upper() != HEADER_TYPE[kind]:
        raise MappingError(f"header 'mapping' is {header.get('mapping')!r}, expected {HEADER_TYPE[kind]!r}")
    if str(header.get("observatory", observatory)).lower() != observatory:
        raise MappingError(f"header 'observatory' is {header.get('observatory')!r}, expected {observatory!r}")
    if kind != "pmap" and not INSTRUMENT.match(str(header.get("instrument", "")).lower()):
        raise MappingError(f"header 'instrument' is {header.get('instrument')!r}, not an instrument's name")
    # The client reads header values folded to lower case (``LowerCaseDict``): an upper-case sha1sum passes.
    if check_header_sum and str(header.get("sha1sum", "")).lower() != header_checksum(text):
        raise MappingError("its header sha1sum does not match its text, so the crds client would refuse it")
    wanted = CHILD_KIND[kind]
    children: dict[str, None] = {}
    for value in _selector_values(selector, fold_case=kind != "rmap"):
        if names.is_special(value):
            continue
        try:
            names.check_name(value)
        except names.UnsafeName as exc:
            raise MappingError(f"it names {exc}") from None
        if names.kind_of(value) != wanted:
            raise MappingError(f"a {kind} may name only {wanted} files, but it names {value!r}")
        children[value] = None
    return Mapping(name=name, kind=kind, header=header, children=tuple(children))
