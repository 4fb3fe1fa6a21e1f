"""The two forms a context's rules come in, and what each asks of a warm and of crds.

A CRDS context is a set of rules: which reference each dataset gets. A bucket
holds them in one of two forms:

- **mappings** (``mappings/<obs>/``: the .pmap, its .imaps and .rmaps), text
  in a restricted Python subset that crds-job parses as data (``mapping``),
  so it plans by itself. Roman's buckets hold these, as does any mirror that
  ``crds sync`` filled.
- **a pickle** (``pickles/<obs>/<context>.pkl``): the context as the crds
  library's own objects, pickled. STScI's HST buckets hold only these.
  Loading a pickle runs code, so crds-job's own process never loads one: the
  real crds library, in the child process that already chooses references
  (``bestrefs``), loads it and says which references it names; and the
  calibration's crds loads the same verified file from the cache
  (``CRDS_USE_PICKLED_CONTEXTS``), as it would have loaded it from the bucket.

Where a bucket holds both, the mappings are used: then nothing is loaded as code.
Pure: where each form's files are, what they plan to, what crds is told.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping as MappingType
from dataclasses import dataclass, field

from . import plan
from .mapping import Mapping
from .plan import MAPPINGS, PICKLE
from .server_config import FileInfo

#: The bucket's and the cache's folder of pickles (``pickles/<obs>/``), as crds names it.
PICKLE_AREA = plan.AREA_OF_KIND[PICKLE]


def pickle_name(context: str) -> str:
    """The pickle of ``context`` as crds names it (``config.locate_pickle``): hst_1201.pmap.pkl."""
    return context + ".pkl"


def context_of_pickle(name: str) -> str:
    """The context a pickle's name is of (the inverse of ``pickle_name``)."""
    return name.removesuffix(".pkl")


@dataclass(frozen=True)
class Rules:
    """One context's rules, loaded in one form (``MAPPINGS`` or ``PICKLE``)."""

    context: str
    form: str
    files: tuple[plan.Entry, ...]  # what crds reads them from: the mapping closure, or the pickle
    mappings: MappingType[str, Mapping] = field(default_factory=dict)  # parsed: the mappings form only

    @property
    def pickled(self) -> bool:
        """Whether they are a pickle: opaque until crds loads it, so only crds can list what it names."""
        return self.form == PICKLE

    def plan(
        self,
        metadata: MappingType[str, FileInfo],
        instruments: Iterable[str] = (),
        mappings_only: bool = False,
        listing: MappingType[str, Iterable[str]] | None = None,
    ) -> plan.Plan:
        """The warm's plan; for a pickle, from crds's ``listing`` of it, which it needs."""
        if self.form == MAPPINGS:
            return plan.build(self.context, self.mappings, metadata, instruments, mappings_only)
        if listing is None:
            raise ValueError("a pickle's plan needs crds's listing of it")
        return plan.from_listing(self.context, self.files[0], listing, metadata, instruments, mappings_only)


def of_mappings(context: str, mappings: MappingType[str, Mapping], metadata: MappingType[str, FileInfo]) -> Rules:
    """The rules of ``context`` as its loaded mapping closure."""
    return Rules(context=context, form=MAPPINGS, files=plan.mapping_entries(mappings, metadata),
                 mappings=mappings)


def of_pickle(context: str, size: int, metadata: MappingType[str, FileInfo]) -> Rules:
    """The rules of ``context`` as its pickle: checked by the sha1 and size the bucket publishes for
    it, where it does; else by ``size``, the object's (and by S3's own checksum, see ``fetch``)."""
    name = pickle_name(context)
    info = metadata.get(name)
    entry = plan.Entry(name=name, kind=PICKLE, size=info.size if info else size, sha1=info.sha1 if info else "")
    return Rules(context=context, form=PICKLE, files=(entry,))
