"""Which files a warm needs: the files of the context's rules and the references it names.

Pure: given the context's rules and the bucket's download metadata, decide
the entries to warm, each with the size and sha1 it must have. The rules
come in one of two forms (``rules``): the mapping closure, parsed here as
data (``build``), or a pickle, which only crds may load and which crds lists
the references of (``from_listing``). The rules' files are always all there
(the crds client may open any imap or rmap of the context, e.g. to check for
bad files); ``instruments`` and ``mappings_only`` narrow only the references.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping as MappingType
from dataclasses import dataclass

from . import names
from .errors import BucketContentError, UsageError
from .mapping import INSTRUMENT, Mapping
from .server_config import FileInfo


@dataclass(frozen=True)
class Entry:
    """One file to have in the cache."""

    name: str
    kind: str  # pmap, imap, rmap, pickle, reference (or config, for the bucket's own config)
    size: int
    sha1: str
    instrument: str = ""  # of a reference: from the rmap that names it

    def accepts_sha1(self, digest: str) -> bool:
        """Whether a file whose sha1 is ``digest`` may be this one.

        Any may when the bucket publishes no sha1: the size is then all there is to check.
        """
        return not self.sha1 or digest == self.sha1

    @property
    def area(self) -> str:
        """The folder of the bucket and of the cache it lives in."""
        return AREA_OF_KIND.get(self.kind, "mappings")


#: The forms a context's rules come in (see ``rules``); a pickle's entry is of kind PICKLE.
MAPPINGS, PICKLE = "mappings", "pickle"

#: The folder of each kind that is not a mapping's.
AREA_OF_KIND = {"config": "config", PICKLE: "pickles", "reference": "references"}


@dataclass(frozen=True)
class Plan:
    context: str
    instruments: tuple[str, ...]  # every instrument of the context
    rules: tuple[Entry, ...]  # the files crds reads the context's rules from: its mappings, or its pickle
    references: tuple[Entry, ...]

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self.rules + self.references

    @property
    def pickles(self) -> int:
        return sum(entry.kind == PICKLE for entry in self.rules)

    @property
    def mapping_files(self) -> int:
        return len(self.rules) - self.pickles

    @property
    def form(self) -> str:
        """How the context's rules come: "mappings", or "pickle" (code, loaded by crds alone)."""
        return PICKLE if self.pickles else MAPPINGS

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.entries)


def entry(name: str, kind: str, metadata: MappingType[str, FileInfo], named_by: str, instrument: str = "") -> Entry:
    """The entry for ``name``, with the size and sha1 the bucket publishes for it."""
    info = metadata.get(name)
    if info is None:
        raise BucketContentError(
            f"{name}, named by {named_by}, is absent from the bucket's download_metadata, so it cannot be checked",
            "the bucket is inconsistent; pin another context or report it to the bucket's maintainers",
        )
    return Entry(name=name, kind=kind, size=info.size, sha1=info.sha1, instrument=instrument)


def _check_instruments(context: str, known: Iterable[str], selected: tuple[str, ...]) -> None:
    unknown = sorted(set(selected) - set(known))
    if unknown:
        raise UsageError(
            f"instrument(s) {', '.join(unknown)} not in context {context}",
            f"use some of: {', '.join(sorted(known))}",
        )


def _reference_entries(
    groups: Iterable[tuple[str, str, Iterable[str]]], metadata: MappingType[str, FileInfo],
    selected: tuple[str, ...],
) -> tuple[Entry, ...]:
    """The entries of the references ``groups`` name: (who names them, their instrument, the names)."""
    found: dict[str, Entry] = {}
    for named_by, instrument, group in groups:
        if selected and instrument not in selected:
            continue
        for name in group:
            for one in filter(None, (name, names.geis_partner(name))):
                if one not in found:
                    found[one] = entry(one, "reference", metadata, named_by, instrument)
    return tuple(sorted(found.values(), key=lambda e: e.name))


def mapping_entries(mappings: MappingType[str, Mapping], metadata: MappingType[str, FileInfo]) -> tuple[Entry, ...]:
    """The entries of a loaded mapping closure, each named by its parent; an imap must name rmaps of its
    own instrument, whose references would otherwise be written into another instrument's folder."""
    parents: dict[str, str] = {}
    for m in mappings.values():
        for child in m.children:
            parents.setdefault(child, m.name)
            named = mappings.get(child)
            if m.kind == "imap" and named is not None and named.instrument != m.instrument:
                raise BucketContentError(
                    f"{m.name} (instrument {m.instrument}) names {child}, of instrument {named.instrument}",
                    "pin another context, or report the mapping to the bucket's maintainers",
                )
    return tuple(entry(name, m.kind, metadata, named_by=parents.get(name, "the context choice"))
                 for name, m in sorted(mappings.items()))


def build(
    context: str,
    mappings: MappingType[str, Mapping],
    metadata: MappingType[str, FileInfo],
    instruments: Iterable[str] = (),
    mappings_only: bool = False,
) -> Plan:
    """Plan a warm of ``context`` from its loaded mapping closure.

    ``mappings`` holds every mapping of the closure, by name. The named
    instruments must exist in the context; an empty selection means all.
    """
    known = sorted({m.instrument for m in mappings.values() if m.kind == "imap"})
    selected = tuple(instruments)
    _check_instruments(context, known, selected)
    rules = mapping_entries(mappings, metadata)
    rmaps = sorted((m for m in mappings.values() if m.kind == "rmap"), key=lambda m: m.name)
    references = () if mappings_only else _reference_entries(
        ((rmap.name, rmap.instrument, rmap.children) for rmap in rmaps), metadata, selected)
    return Plan(context=context, instruments=tuple(known), rules=rules, references=references)


def from_listing(
    context: str,
    pickle: Entry,
    listing: MappingType[str, Iterable[str]],
    metadata: MappingType[str, FileInfo],
    instruments: Iterable[str] = (),
    mappings_only: bool = False,
) -> Plan:
    """Plan a warm of ``context`` from its ``pickle`` and crds's ``listing`` of it (instrument -> references).

    The listing comes from crds having loaded the pickle, in a child process:
    data we did not write, so each instrument must be a plain instrument name
    (it becomes a folder in the ``instrument`` layout) and each reference
    must be in the metadata. ``mappings_only``: the pickle alone.
    """
    for instrument, group in listing.items():
        if not isinstance(instrument, str) or not INSTRUMENT.match(instrument):
            raise BucketContentError(f"{pickle.name} names an instrument {str(instrument)[:40]!r}, not an "
                                     "instrument's name", "pin another context, or report the pickle to the "
                                     "bucket's maintainers")
        if not isinstance(group, (list, tuple)) or not all(isinstance(name, str) for name in group):
            raise BucketContentError(f"{pickle.name} lists {instrument}'s references as something else than "
                                     "file names", "report it with this line")
    known = sorted(listing)
    selected = tuple(instruments)
    _check_instruments(context, known, selected)
    references = () if mappings_only else _reference_entries(
        ((pickle.name, instrument, group) for instrument, group in sorted(listing.items())), metadata, selected)
    return Plan(context=context, instruments=tuple(known), rules=(pickle,), references=references)


def narrow(full: Plan, chosen: Iterable[str]) -> Plan:
    """The plan with only the ``chosen`` references (and their GEIS data partners).

    ``chosen`` comes from crds's best references over the same rules, so
    each name must be one the context names.
    """
    by_name = {entry.name: entry for entry in full.references}
    wanted: dict[str, Entry] = {}
    for name in chosen:
        for one in filter(None, (name, names.geis_partner(name))):
            found = by_name.get(one)
            if found is None:
                raise BucketContentError(f"crds chose {one}, which {full.context} does not name",
                                         "report it with this line; pass --all-references meanwhile")
            wanted[one] = found
    return Plan(context=full.context, instruments=full.instruments, rules=full.rules,
                references=tuple(sorted(wanted.values(), key=lambda e: e.name)))
