"""Which files a warm needs: the context's mapping closure and the references it names.

Pure: given the parsed mappings and the bucket's download metadata, decide
the entries to warm, each with the size and sha1 it must have. The mapping
closure is always whole (the crds client may open any imap or rmap of the
context, e.g. to check for bad files); ``instruments`` and ``mappings_only``
narrow only the references.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping as MappingType
from dataclasses import dataclass

from . import names
from .errors import BucketContentError, UsageError
from .mapping import Mapping
from .server_config import FileInfo


@dataclass(frozen=True)
class Entry:
    """One file to have in the cache."""

    name: str
    kind: str  # pmap, imap, rmap, reference (or config, for the bucket's own config)
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
        if self.kind == "config":
            return "config"
        return "references" if self.kind == "reference" else "mappings"


@dataclass(frozen=True)
class Plan:
    context: str
    instruments: tuple[str, ...]  # every instrument of the context
    mappings: tuple[Entry, ...]
    references: tuple[Entry, ...]

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self.mappings + self.references

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


def _references(rmap: Mapping) -> Iterable[str]:
    for name in rmap.children:
        yield name
        partner = names.geis_partner(name)
        if partner:
            yield partner


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
    unknown = sorted(set(selected) - set(known))
    if unknown:
        raise UsageError(
            f"instrument(s) {', '.join(unknown)} not in context {context}",
            f"use some of: {', '.join(known)}",
        )
    parents: dict[str, str] = {}
    for m in mappings.values():
        for child in m.children:
            parents.setdefault(child, m.name)
            named = mappings.get(child)
            if m.kind == "imap" and named is not None and named.instrument != m.instrument:
                raise BucketContentError(  # its references would go to another instrument's folder
                    f"{m.name} (instrument {m.instrument}) names {child}, of instrument {named.instrument}",
                    "pin another context, or report the mapping to the bucket's maintainers",
                )
    mapping_entries = [
        entry(name, m.kind, metadata, named_by=parents.get(name, "the context choice"))
        for name, m in sorted(mappings.items())
    ]
    reference_entries: dict[str, Entry] = {}
    if not mappings_only:
        for rmap in sorted((m for m in mappings.values() if m.kind == "rmap"), key=lambda m: m.name):
            if selected and rmap.instrument not in selected:
                continue
            for name in _references(rmap):
                if name not in reference_entries:
                    reference_entries[name] = entry(name, "reference", metadata, rmap.name, rmap.instrument)
    return Plan(
        context=context,
        instruments=tuple(known),
        mappings=tuple(mapping_entries),
        references=tuple(sorted(reference_entries.values(), key=lambda e: e.name)),
    )


def narrow(full: Plan, chosen: Iterable[str]) -> Plan:
    """The plan with only the ``chosen`` references (and their GEIS data partners).

    ``chosen`` comes from crds's best references over the same mappings, so
    each name must be one the context's rmaps name.
    """
    by_name = {entry.name: entry for entry in full.references}
    wanted: dict[str, Entry] = {}
    for name in chosen:
        for one in filter(None, (name, names.geis_partner(name))):
            found = by_name.get(one)
            if found is None:
                raise BucketContentError(f"crds chose {one}, which no rmap of {full.context} names",
                                         "report it with this line; pass --all-references meanwhile")
            wanted[one] = found
    return Plan(context=full.context, instruments=full.instruments, mappings=full.mappings,
                references=tuple(sorted(wanted.values(), key=lambda e: e.name)))
