"""One warm: resolve the context, load its rules, plan, fetch what is missing.

The steps, in the order a reader would check them:

1. read the bucket's ``server_config`` and resolve the context to a .pmap;
2. load the context's rules (``rules``) as the bucket holds them: its mapping
   closure (pmap, imaps, rmaps), each mapping taken from the cache when its
   sha1 matches, else fetched, verified and written, and parsed as data; or,
   in a bucket without mappings, its pickle, fetched and verified the same
   way, and loaded by crds alone, in a child process (``bestrefs``);
3. plan the references (for input datasets, those crds chooses for them),
   look at what the cache already holds;
4. fetch the rest (unless ``--dry-run``), then write the cache's config files
   last, so a cache with a config is a cache whose files are all there.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from . import (
    answers,
    bestrefs,
    crds_server,
    datasets,
    launch,
    layers,
    mapping,
    offline,
    plan,
    retention,
    rules,
    scratch,
    server_config,
)
from .cache import MODE_FILE, Cache, FileId, file_id, open_in_cache, sha1_of
from .durability import Durability
from .errors import (
    BucketContentError,
    CacheError,
    ContextAbsent,
    CrdsJobError,
    DatasetError,
    IntegrityError,
    Interrupted,
    UsageError,
)
from .fetch import Fetcher, fetch_all
from .progress import Progress, report_periodically
from .remote import Bucket, Denied, Missing, Unreachable
from .settings import Settings
from .source import Source, Where

BAD_FILES = "bad_files.txt"
#: A mapping is text of a few kB to a few MB; far more is not a mapping.
MAX_MAPPING_BYTES = 64 * 2**20


@dataclass
class Outcome:
    """What a warm found and did."""

    settings: Settings
    cache: Cache
    context: str
    plan: plan.Plan
    to_fetch: list[plan.Entry]
    progress: Progress
    from_lower: dict[plan.Entry, str] = field(default_factory=dict)  # references linked from a lower layer
    lease: int | None = None  # the descriptor of this warm's lease: open (and locked) until the process ends
    fetched: bool = False
    unchecked_sha1: list[str] = field(default_factory=list)
    selection: datasets.Selection = datasets.Selection((), "none")
    choices: list[bestrefs.Choice] = field(default_factory=list)
    source: str = ""  # where the files came from (a bucket's or a server's address), for the report
    server: str | None = None  # the CRDS server's URL, where the files came from one

    def candidates(self) -> dict[str, Any]:
        """The references warmed only because a header cannot decide between them, and their bytes."""
        by_kind = undecided(self.choices, self.plan)
        files = {name for found in by_kind.values() for name in found["added"]}
        sizes = {entry.name: entry.size for entry in self.plan.references}
        return {"files": len(files), "bytes": sum(sizes.get(name, 0) for name in files), "types": sorted(by_kind)}

    def report(self) -> dict[str, Any]:
        """The plan as ``--dry-run`` prints it: every file, its bytes, whether it is cached."""
        missing = {entry.name for entry in self.to_fetch}
        files = [
            {
                "name": entry.name,
                "kind": entry.kind,
                "instrument": entry.instrument or None,
                "size": entry.size,
                "sha1": entry.sha1 or None,
                "path": self.cache.relpath(entry),
                "cached": entry.name not in missing and entry not in self.from_lower,
                **({"lower": self.from_lower[entry]} if entry in self.from_lower else {}),
            }
            for entry in self.plan.entries
        ]
        fetch_bytes = sum(entry.size for entry in self.to_fetch)
        location = self.settings.location
        return {
            "observatory": location.observatory,
            "environment": location.environment,
            "source": self.source,
            "bucket": location.bucket if self.server is None else None,
            "prefix": location.prefix if self.server is None else None,
            "context": self.context,
            "rules": self.plan.form,
            "cache": self.cache.root,
            "ref_subdir_mode": self.cache.mode,
            "instruments": list(self.settings.instruments) or list(self.plan.instruments),
            "totals": {
                "files": len(files),
                "bytes": self.plan.total_bytes,
                "mappings": self.plan.mapping_files,
                "pickles": self.plan.pickles,
                "references": len(self.plan.references),
                "cached_files": len(files) - len(self.to_fetch) - len(self.from_lower),
                "cached_bytes": self.plan.total_bytes - fetch_bytes - sum(e.size for e in self.from_lower),
                "lower_files": len(self.from_lower),
                "lower_bytes": sum(e.size for e in self.from_lower),
                "fetch_files": len(self.to_fetch),
                "fetch_bytes": fetch_bytes,
            },
            "candidates": self.candidates(),
            "references_for": self.selection.source if self.selection.selective else "the whole context",
            "datasets": [choice.report() for choice in self.choices],
            "files": files,
        }


class _Warm:
    """The state of one warm, threaded through its steps."""

    def __init__(self, settings: Settings, bucket: Source, cache: Cache, durability: Durability, log: Any,
                 offline: bool = False) -> None:
        self.settings = settings
        self.offline = offline  # the cache stands in for the source: read, never written
        self.bucket = bucket
        self.cache = cache
        self.log = log
        self.progress = Progress()
        self.durability = durability
        self.fetcher = Fetcher(bucket, settings, self.progress, log, durability)
        self.writable = not settings.dry_run and not offline and cache.writable()
        self.unwritten: dict[plan.Entry, bytes] = {}  # mappings fetched, not written (dry run, read-only cache)
        self.layers = layers.Layers(cache.lowers, cache.observatory)
        #: Whether this warm leases what it plans (``retention``): a cache it may write, and writes (no dry run,
        #: nor a warm through an outage, which writes nothing at all).
        self.leasing = self.writable
        self.gate: retention.Gate | None = None
        self.from_lower: dict[plan.Entry, str] = {}  # references a lower layer holds: linked, not fetched
        self.kept: tuple[str, bestrefs.Answer] | None = None  # crds's answer, to keep once the warm is done

    def cover_missing(self, mappings: list[plan.Entry]) -> None:
        """Before ``mappings`` are fetched: a durable journal names those not cached (see ``durability``).

        One cached at its size is rewritten only if corrupt, which is rare: it is then fsync'ed instead.
        """
        if self.writable:
            paths = [(self.cache.path(entry), entry) for entry in mappings]
            self.durability.cover((path, entry.size, entry.sha1) for path, entry in paths
                                  if self.cache.present_size(path) != entry.size)

    def cover_one(self, path: str, data: bytes) -> bool:
        """Before ``data`` is written to ``path``: a durable journal names it, else it is to be fsync'ed."""
        self.durability.cover([(path, len(data), hashlib.sha1(data).hexdigest())])
        return self.durability.needs_fsync(path)

    def corrupt_found(self, entry: plan.Entry) -> None:
        if self.offline:  # nothing to fetch it from: the cache cannot stand in (the warm ends on the missing file)
            self.log.warning("cached file is corrupt", file=entry.name)
        else:
            self.log.warning("cached file is corrupt, fetching it again", file=entry.name)

    # ----- step 1 ---------------------------------------------------------------------------

    async def read_config(self) -> server_config.ServerConfig:
        try:
            data = await self.fetcher.request(server_config.NAME, lambda: self.bucket.read(
                "config", server_config.NAME, most=server_config.MAX_CONFIG_BYTES))
        except Missing as exc:  # most often a wrong prefix, which no retry fixes: say so first
            raise Missing(exc.what, "check that --bucket/--prefix (CRDS_S3_BUCKET/CRDS_S3_PREFIX) name a CRDS "
                                    "cache; if they do, it is being updated: run the job again later") from None
        return server_config.parse(data, self.bucket.location.observatory)

    async def context_absent(self, context: str, pinned: bool, refused: bool = False) -> Exception:
        """The error for a context the bucket does not hold; ``refused``: S3 refused a look (403), as it
        does for a missing object where the job may not list, so that absence is a guess."""
        location = self.bucket.location
        there = await self.contexts_there()
        where = " nor in ".join(location.uri(area) for area in location.context_areas)
        if refused:
            where += " (S3 refused the job a look at its pickle: allow s3:ListBucket there to be sure)"
        if pinned:
            return ContextAbsent(f"context {context} is not in {where} (contexts there: {there})",
                              "pin one of those with --context or CRDS_CONTEXT, or leave it unset for the latest")
        # Final (65), which job runners do not retry: so the advice is not to run it again later.
        return BucketContentError(f"the bucket's latest context {context} is not in {where} (contexts there: {there})",
                                  "pin one of those with --context or CRDS_CONTEXT, or report the bucket to its "
                                  "maintainers")

    async def contexts_there(self) -> str:
        """The contexts the bucket holds, as mappings or as pickles, for an error that lists them."""
        try:  # a courtesy: the error must still be the context's
            mapped = await self.bucket.list_names("mappings", ".pmap")
            pickled = [rules.context_of_pickle(name) for name in
                       await self.bucket.list_names(rules.PICKLE_AREA, rules.pickle_name(".pmap"))]
        except Exception:
            return "(the bucket could not be listed)"
        only_pickled = sorted(set(pickled) - set(mapped))
        if not only_pickled:
            return ", ".join(mapped) or "none"
        return "; ".join(filter(None, [", ".join(mapped), f"as pickles only: {', '.join(only_pickled)}"]))

    # ----- step 2 ---------------------------------------------------------------------------

    async def load_rules(self, context: str, config: server_config.ServerConfig, pinned: bool) -> rules.Rules:
        """The context's rules as the bucket holds them: its mappings where it has them (then nothing
        is loaded as code), else its pickle, which crds alone will load (``ask_crds``)."""
        refused: Denied | None = None  # S3's 403 for the pmap: a missing object, where the job may not list
        if context in config.metadata:
            # A GET, not a HEAD first: the pmap is needed anyway where it is there, and some servers
            # refuse an anonymous HEAD that they would answer as a GET.
            try:
                pmap_entry = plan.entry(context, "pmap", config.metadata, named_by="the context choice")
                self.cover_missing([pmap_entry])
                pmap = await self.load_mapping(pmap_entry)
            except Missing:
                pass
            except Denied as exc:
                refused = exc
            else:
                return rules.of_mappings(context, await self.load_closure(pmap, config), config.metadata)
        name = rules.pickle_name(context)
        try:
            size = await self.fetcher.request(name, lambda: self.bucket.size(rules.PICKLE_AREA, name))
        except Denied:
            if refused is None and context not in config.metadata:  # listed nowhere: most likely no such context
                raise await self.context_absent(context, pinned, refused=True) from None
            raise
        if size is None:
            if refused is not None:
                raise refused
            raise await self.context_absent(context, pinned)
        if not self.settings.pickles:
            where = self.bucket.location.uri(rules.PICKLE_AREA, name)
            raise UsageError(f"the bucket holds context {context} as a pickle, {where}, and no mappings, and "
                             "--no-pickles (CRDS_JOB_PICKLES) refuses pickles",
                             "allow them (a pickle is code: crds loads it, in a child process, and in the command, "
                             "as it would from the bucket), or warm from a bucket that holds the mappings")
        found = rules.of_pickle(context, size, config.metadata)
        self.log.info("the bucket holds the context as a pickle, without mappings: crds will load it, in a "
                      "child process", pickle=name, size=found.files[0].size,
                      check="sha1" if found.files[0].sha1 else "size, and S3's own checksum if fetched in one GET")
        await self.load_pickle(found.files[0])
        return found

    async def load_pickle(self, entry: plan.Entry) -> None:
        """Have the context's pickle in the cache, verified (held in memory when the cache is not written).

        A cached copy is checked by its sha1 where the bucket publishes one,
        whatever ``--verify-existing`` says: it is code that crds will run.
        """
        if self.offline and not entry.sha1:  # its size is the cached copy's own: nothing would be checked
            raise Missing(f"the bucket publishes no sha1 for {entry.name}, so its cached copy cannot be checked "
                          "without the bucket", "a pickle is code: it is loaded only as the bucket serves it")
        missing, corrupt = await self.survey((entry,), verify=bool(entry.sha1))
        if not missing:
            return
        if self.writable:
            self.cover_missing([entry])
            await self.fetcher.fetch_file(entry, self.cache, corrupt.get(entry.name))
        else:
            self.unwritten[entry] = await self.fetcher.fetch_bytes(entry)

    async def cached_bytes(self, entry: plan.Entry) -> tuple[bytes | None, FileId | None]:
        """The cached copy of a mapping if its sha1 matches (mappings are small: always checked).

        Else None, with the identity of the cached copy when one of the right
        size is there but corrupt: only that copy is to be replaced.
        """
        path = self.cache.path(entry)
        if self.cache.present_size(path) != entry.size:
            return None, None
        try:
            data, found = await self.fetcher.in_thread(_read, path)
        except FileNotFoundError:  # gone since: another writer is replacing it
            return None, None
        if len(data) != entry.size or not entry.accepts_sha1(hashlib.sha1(data).hexdigest()):
            self.corrupt_found(entry)
            return None, found
        return data, None

    async def load_mapping(self, entry: plan.Entry) -> mapping.Mapping:
        if entry.size > MAX_MAPPING_BYTES:
            raise BucketContentError(f"mapping {entry.name} is {entry.size} bytes, too large for a mapping",
                                     "report it to the bucket's maintainers")
        data, stale = await self.cached_bytes(entry)
        if data is not None:
            self.progress.files_present += 1
            self.progress.bytes_present += entry.size
        elif self.writable:
            # Through the cache's lock, like a reference: with several writers on one
            # cache, one downloads the mapping and the others read what it wrote.
            await self.fetcher.fetch_file(entry, self.cache, stale)
            data, _ = await self.cached_bytes(entry)
            if data is None:
                raise IntegrityError(f"{entry.name} changed in the cache right after it was verified",
                                     "another program is writing into the cache; give crds-job its own")
        else:
            data = await self.fetcher.fetch_bytes(entry)
            self.unwritten[entry] = data
        try:
            # As the crds client reads it (a text file: universal newlines), so its checks agree.
            text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
            return mapping.parse(entry.name, text, self.bucket.location.observatory,
                                 check_header_sum=not crds_ignores_mapping_checksum())
        except (UnicodeDecodeError, mapping.MappingError) as exc:
            raise BucketContentError(f"mapping {entry.name} is unusable: {exc}",
                                     "pin another context, or report the mapping to the bucket's maintainers") from None

    async def load_closure(
        self, pmap: mapping.Mapping, config: server_config.ServerConfig
    ) -> dict[str, mapping.Mapping]:
        """Every mapping of the context ``pmap``, loaded level by level (imaps, then rmaps)."""
        loaded = {pmap.name: pmap}
        found = [pmap]
        while found:
            level = [
                plan.entry(child, mapping.CHILD_KIND[m.kind], config.metadata, named_by=m.name)
                for m in found if m.kind != "rmap"
                for child in m.children if child not in loaded
            ]
            level = list({entry.name: entry for entry in level}.values())
            self.cover_missing(level)
            found = list(await asyncio.gather(*(self.load_mapping(entry) for entry in level)))
            loaded.update((m.name, m) for m in found)
        return loaded

    # ----- step 3 ---------------------------------------------------------------------------

    async def survey(
        self, references: tuple[plan.Entry, ...], verify: bool | None = None
    ) -> tuple[list[plan.Entry], dict[str, FileId]]:
        """The files to fetch, and the identity of each cached copy found corrupt among them.

        ``verify``: re-hash the cached copies (default: as ``--verify-existing`` says).
        """
        missing: list[plan.Entry] = []
        candidates: list[plan.Entry] = []
        for entry in references:
            if self.cache.present_size(self.cache.path(entry)) == entry.size:
                candidates.append(entry)
            else:
                missing.append(entry)
        corrupt: dict[str, FileId] = {}
        if (self.settings.verify_existing if verify is None else verify) and candidates:
            sums = await asyncio.gather(*(self.fetcher.in_thread(sha1_of, self.cache.resolved(self.cache.path(e)))
                                          for e in candidates))
            for entry, (digest, found) in zip(candidates, sums, strict=True):
                if not entry.accepts_sha1(digest):
                    self.corrupt_found(entry)
                    corrupt[entry.name] = found
                    missing.append(entry)
        for entry in candidates:
            if entry.name not in corrupt:
                self.progress.files_present += 1
                self.progress.bytes_present += entry.size
        if self.layers:
            missing = await self.in_lower_layers(missing, corrupt, verify)
        return missing, corrupt

    async def in_lower_layers(self, missing: list[plan.Entry], corrupt: dict[str, FileId],
                              verify: bool | None) -> list[plan.Entry]:
        """``missing`` less the references a lower layer holds (noted in ``from_lower``).

        Not one the cache holds corrupt: its copy is replaced by the source's, as without layers.
        """
        verify = self.settings.verify_existing if verify is None else verify
        found = {entry: self.layers.find(entry) for entry in missing if entry.name not in corrupt}
        found = {entry: path for entry, path in found.items() if path}
        if verify and found:
            checks = await asyncio.gather(*(self.fetcher.in_thread(self.layers.verified, entry, path)
                                            for entry, path in found.items()))
            for (entry, path), good in zip(list(found.items()), checks, strict=True):
                if not good:
                    self.log.warning("a lower layer's copy does not have the bucket's sha1: fetched instead",
                                     file=entry.name, lower=path)
                    del found[entry]
        self.from_lower.update(found)
        return [entry for entry in missing if entry not in found]

    def plan_paths(self, the_plan: plan.Plan) -> list[str]:
        """The plan's files, relative to the cache: what its lease and its context's record name."""
        return [self.cache.relpath(entry) for entry in the_plan.entries]

    def used(self, context: str, the_plan: plan.Plan) -> None:
        """The plan is in the cache: record it for its context, and mark its files used (``retention``)."""
        if self.gate is None:  # no gate taken (no lease either): a cache this warm does not write
            return
        retention.record(self.cache.root, self.cache.observatory, context, self.plan_paths(the_plan))
        retention.touch(self.cache.path(entry) for entry in the_plan.entries)

    async def link_lower(self) -> None:
        """Link each reference a lower layer holds into the cache: the command then sees one cache."""
        for entry, target in self.from_lower.items():
            linked = await self.cache.link(self.cache.path(entry), target, entry.size)
            self.progress.files_linked += linked
            self.progress.bytes_linked += entry.size if linked else 0
            self.progress.files_present += not linked  # another writer put it there meanwhile
            self.progress.bytes_present += 0 if linked else entry.size

    async def ask_crds(self, the_rules: rules.Rules, config: server_config.ServerConfig, selection: datasets.Selection,
                       listing: bool) -> bestrefs.Answer:
        """The real crds's best references for each dataset, from the verified rules, offline; and,
        with ``listing``, every reference the context names (what only crds can read in a pickle).

        The same question asked here before (``answers``) is answered as crds answered it then.
        """
        key = None if listing else answers.key(the_rules.context, the_rules.files, selection, os.environ)
        answer = answers.recall(self.cache, the_rules.context, key) if key else None
        if answer is None:
            answer = await self._ask_child(the_rules, config, selection, listing)
            self.kept = (key, answer) if key else None
        else:
            self.log.info("crds's choice for these datasets, as it made it here before: crds is not asked again",
                          key=key, cache=self.cache.root)
        for one in answer.skipped:
            self.log.warning("a command argument named like a dataset is not one crds can read: skipped",
                             argument=one.dataset, reason=one.reason)
        for choice in answer.choices:
            self.log.info("best references", dataset=choice.dataset, instrument=choice.instrument, crds=answer.crds,
                          references=choice.references, not_applicable=list(choice.not_applicable),
                          **({"association": choice.association} if choice.association else {}))
            if not choice.files:
                self.log.warning("crds chose no reference for a named dataset: is it an exposure?",
                                 dataset=choice.dataset)
            if choice.unmatched:
                self.log.warning("no reference matched some types of a dataset; the calibration decides "
                                 "whether that is fatal", dataset=choice.dataset, unmatched=choice.unmatched)
        return answer

    async def _ask_child(self, the_rules: rules.Rules, config: server_config.ServerConfig,
                         selection: datasets.Selection, listing: bool) -> bestrefs.Answer:
        """crds's answer, from a child process on a scratch CRDS_PATH of the verified rules (``bestrefs``)."""
        location = self.settings.location  # for the child's offline crds: its observatory, no source
        pickle = the_rules.files[0] if the_rules.pickled else None
        handed = None  # the cached copy of the pickle crds is given: the one to remove if it cannot load it
        if pickle is not None and pickle not in self.unwritten:
            found = self.cache.present(self.cache.path(pickle))
            handed = file_id(found) if found is not None else None
        with scratch.folder() as folder:
            self._scratch_cache(folder, the_rules.files, config)
            env = launch.apply(os.environ, launch.crds_environment(location, folder, the_rules.context, "flat",
                                                                   allow_fetch=False, pickled=the_rules.pickled))
            try:
                answer = await bestrefs.choose(
                    selection.datasets, the_rules.context, location.observatory, env,
                    anonymous=self.bucket.anonymous, strict=selection.strict, scratch=folder,
                    pickle=pickle.name if pickle else "", listing=listing, headers=selection.headers,
                    reftypes=selection.reftypes)
            except bestrefs.Unloadable:
                if pickle is not None and handed is not None and self.writable:  # checked, yet of no use: not kept
                    await self.cache.remove(self.cache.path(pickle), handed)
                raise
        return answer

    def _scratch_cache(self, folder: str, files: tuple[plan.Entry, ...], config: server_config.ServerConfig) -> None:
        """A CRDS_PATH for crds to choose from: the context's verified rules and a config, nothing else.

        Not the cache itself, whose config is written last (a cache with a config
        is a complete cache); cached files are linked, unwritten ones written.
        """
        crds_path = Cache(folder, self.bucket.location.observatory, "flat")
        try:
            for entry in files:
                data = self.unwritten.get(entry)
                if data is None:
                    crds_path.ensure_folder(crds_path.folder(entry.area))
                    os.symlink(self.cache.path(entry), crds_path.path(entry))
                else:
                    crds_path.write_now(crds_path.path(entry), data, fsync=False)
            for name, text in ((server_config.NAME, server_config.for_cache(config, _synced_now())),
                               (MODE_FILE, crds_path.mode)):
                crds_path.write_now(crds_path.config_path(name), text.encode("utf-8"), fsync=False)
        except (OSError, CrdsJobError) as exc:  # TMPDIR's trouble, not the cache's
            raise CacheError(f"cannot fill a scratch directory for crds to choose references in, {folder}: "
                             f"{getattr(exc, 'strerror', None) or exc}",
                             "give the job a writable TMPDIR with room (a /tmp volume on a read-only root)") from None

    # ----- step 4 ---------------------------------------------------------------------------

    def config_to_write(self, config: server_config.ServerConfig) -> dict[str, bytes]:
        """The cache's config files that differ from what is there, and their new bytes."""
        files = {MODE_FILE: self.cache.mode, BAD_FILES: "\n".join(config.bad_files)}
        current = self._read_config_file(server_config.NAME)
        if current is None or not server_config.same_as_cached(config, current):
            files[server_config.NAME] = server_config.for_cache(config, _synced_now())
        return {self.cache.config_path(name): text.encode("utf-8") for name, text in files.items()
                if name == server_config.NAME or self._read_config_file(name) != text}

    async def write_config(self, files: dict[str, bytes]) -> None:
        for path, data in files.items():
            await self.cache.write(path, data, self.durability.needs_fsync(path))

    def _read_config_file(self, name: str) -> str | None:
        path = self.cache.config_path(name)
        try:
            with open_in_cache(path, "r", encoding="utf-8") as handle:
                return handle.read()
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def config_missing(self) -> list[str]:
        return [name for name in (MODE_FILE, server_config.NAME) if self._read_config_file(name) is None]


#: The values the crds client reads as true (``config.env_str_to_bool``), exactly: not ``yes``, not `` 1``.
_CRDS_TRUE = frozenset({"True", "true", "TRUE", "T", "t", "1"})


def crds_ignores_mapping_checksum() -> bool:
    """Whether the crds client will skip mappings' header checksums, read as the client reads it.

    Any other value than its true ones it checks (false) or refuses (anything
    else, when it meets a bad checksum): either way we check too.
    """
    return os.environ.get("CRDS_IGNORE_MAPPING_CHECKSUM", "") in _CRDS_TRUE


def _synced_now() -> str:
    """The ``last_synced`` stamp of a config written now, in the form the crds client writes."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _read(path: str) -> tuple[bytes, FileId]:
    """A (small) file's bytes, and the identity of the very file they were read from."""
    with open_in_cache(path) as handle:
        return handle.read(), file_id(os.fstat(handle.fileno()))


def undecided(choices: list[bestrefs.Choice], full: plan.Plan) -> dict[str, dict[str, Any]]:
    """By type, the references warmed because a dataset's header cannot decide between them
    (``bestrefs._candidates``): the files, the keys lacking, the datasets, and the files and bytes
    they add to the plan beyond the references chosen."""
    sizes = {entry.name: entry.size for entry in full.references}
    chosen = {name for choice in choices for name in choice.references.values()}
    by_kind: dict[str, dict[str, Any]] = {}
    for choice in choices:
        for kind, found in choice.candidates.items():
            one = by_kind.setdefault(kind, {"files": set(), "absent": set(), "datasets": []})
            one["files"].update(found["files"])
            one["absent"].update(found["absent"])
            one["datasets"].append(choice.dataset)
    for one in by_kind.values():
        one["added"] = sorted(one["files"] - chosen)
        one["bytes"] = sum(sizes.get(name, 0) for name in one["added"])
        one["files"], one["absent"] = sorted(one["files"]), sorted(one["absent"])
    return by_kind


async def warm(settings: Settings, log: Any) -> Outcome:
    """Do one warm (or, with ``dry_run``, only its planning).

    Where S3 cannot be reached, a cache already complete for the job stands
    in for it (``offline``), unless ``--require-source``: the command needs
    no network, and an outage need not stop a calibration that has its files.
    """
    location = settings.location
    durability = Durability.choose(settings.cache, settings.fsync, settings.fsync_each)
    if not settings.dry_run:  # before anything in the cache is read, even its layout
        await durability.recover(log)
    cache = Cache.open(settings.cache, location.observatory, settings.ref_subdir_mode,
                       layers.real_roots(settings.lower, settings.cache))
    if settings.source == "server" or (settings.source == "auto" and not location.bucket):
        return await _from_server(settings, cache, durability, log)
    bucket = Bucket(location, settings.concurrency, settings.retries)
    try:
        async with bucket:
            return await _attempt(settings, bucket, cache, durability, log)
    except ContextAbsent as absent:
        if settings.source != "auto":
            raise
        log.warning("the bucket does not hold the context asked for: warming it from the CRDS server",
                    context=settings.context, server=settings.server_url, bucket=location.uri(""))
        try:
            return await _from_server(settings, cache, Durability.choose(settings.cache, settings.fsync,
                                                                         settings.fsync_each), log)
        except ContextAbsent as also:  # the server's list is the one to show: it holds more than the bucket
            raise also from absent
        except Unreachable as failure:  # both facts: a typo'd context looks just like this
            raise Unreachable(f"{absent.what}, and the CRDS server, which may hold it, could not be reached: "
                              f"{failure.what}", "check the context's name; if it is right, let the job reach "
                              f"{settings.server_url} (HTTPS egress), or run it again later") from None
    except Unreachable as failure:
        if settings.require_source:
            raise
        return await _offline(settings, failure, bucket.anonymous, location, log)


async def _from_server(settings: Settings, cache: Cache, durability: Durability, log: Any) -> Outcome:
    """The warm from the observatory's CRDS server (or the cache alone, through its outage)."""
    where = crds_server.ServerLocation(settings.observatory, settings.environment, settings.server_url)
    try:
        async with crds_server.ServerSource(where, settings.concurrency) as server:
            outcome = await _attempt(settings, server, cache, durability, log)
    except Unreachable as failure:
        if settings.require_source:
            raise
        outcome = await _offline(settings, failure, False, where, log)
    outcome.server = where.url  # offline too: --allow-fetch gives the command this server for its misses
    return outcome


async def _attempt(settings: Settings, source: Source, cache: Cache, durability: Durability, log: Any,
                   offline: bool = False) -> Outcome:
    job = _Warm(settings, source, cache, durability, log, offline)
    try:
        return await _run(job, settings, log)
    finally:
        job.fetcher.close()
        job.durability.close()


async def _offline(settings: Settings, failure: Unreachable, anonymous: bool, where: Where, log: Any) -> Outcome:
    """The warm again, from the cache alone and without writing it; S3's ``failure`` if the cache cannot
    stand in for it. ``anonymous``: how S3 was read, which is how datasets named by s3:// URIs are read."""
    log.warning("source unreachable: checking whether the cache is complete without it", error=str(failure))
    cache = Cache.open(settings.cache, settings.location.observatory, settings.ref_subdir_mode,
                       layers.real_roots(settings.lower, settings.cache))
    durability = Durability.choose(settings.cache, settings.fsync, settings.fsync_each)
    source = offline.CacheSource(cache, where, anonymous)
    try:
        outcome = await _attempt(settings, source, cache, durability, log, offline=True)
    except Interrupted:
        raise
    except CrdsJobError as exc:
        log.warning("the cache cannot stand in for the source", reason=str(exc))
        raise failure from None
    running = "the command would run offline" if settings.dry_run else "running offline"
    log.warning(f"source unreachable; the cache is complete for {outcome.context}: {running}",
                context=outcome.context, cache=outcome.cache.root)
    return outcome


async def _run(job: _Warm, settings: Settings, log: Any) -> Outcome:
    """One warm, holding the cache's prune gate (``retention``) from before it looks at what the cache
    holds (once the source has answered) until its lease is written, where it writes the cache."""
    try:
        return await _steps(job, settings, log)
    finally:
        if job.gate is not None:
            job.gate.release()


async def _steps(job: _Warm, settings: Settings, log: Any) -> Outcome:
    cache, progress = job.cache, job.progress
    selection = datasets.select(settings.datasets, settings.command,
                                whole_context=bool(settings.all_references or settings.instruments
                                                   or settings.mappings_only),
                                header=settings.header, reftypes=settings.reftypes)
    missing = selection.local_missing()
    if missing:  # before anything is fetched
        raise DatasetError(f"dataset {missing[0]}: it does not exist" + (f" (nor {len(missing) - 1} more)"
                                                                          if len(missing) > 1 else ""),
                           "check the path and that the job can read it, or pass --all-references")
    if job.writable:
        removed = cache.sweep(also=(answers.FOLDER,))
        if removed:
            log.info("removed temporary files left by an interrupted job", count=removed)
    config = await job.read_config()
    if job.leasing and os.path.isdir(cache.root):  # the source answered: this warm will use the cache
        job.gate = await retention.Gate.enter(cache.root, exclusive=False, log=log)
    named = None
    if settings.context:  # a name only the source resolves (a date, build): one more request, retried
        named = await job.fetcher.request(f"context {settings.context}",
                                          lambda: job.bucket.name_context(settings.context))
    context = server_config.resolve_context(named or settings.context, config)
    log.info("context resolved", context=context, requested=settings.context,
             source=job.bucket.location.uri(""), credentials=job.bucket.credentials)
    the_rules = await job.load_rules(context, config, pinned=bool(settings.context))
    if selection.not_found:
        log.info("command arguments named like datasets but not files: taken as outputs",
                 arguments=list(selection.not_found))
    answer = None
    if selection.selective:
        log.info("warming the references of datasets", datasets=list(selection.datasets), source=selection.source,
                 **({"header": dict(selection.header)} if selection.header else {}),
                 **({"reftypes": list(selection.reftypes)} if selection.reftypes else {}))
    if selection.selective or the_rules.pickled:  # a pickle is loaded even for its own sake: never kept unloadable
        answer = await job.ask_crds(the_rules, config, selection, listing=the_rules.pickled)
    the_plan = the_rules.plan(config.metadata, settings.instruments, settings.mappings_only,
                              answer.listing if answer else None)
    choices: list[bestrefs.Choice] = []
    if selection.selective:
        assert answer is not None
        if not answer.choices and selection.reftypes and not selection.header:  # no guess was a dataset
            selection = datasets.Selection((), "--reftypes", selection.not_found, reftypes=selection.reftypes)
            answer = await job.ask_crds(the_rules, config, selection, listing=False)
        choices = answer.choices
        if choices:
            for kind, found in sorted(undecided(choices, the_plan).items()):
                log.info(f"warming every candidate of {kind}: its match keys are not in the dataset", reftype=kind,
                         absent=found["absent"], files=found["files"], datasets=found["datasets"],
                         bytes=found["bytes"])
            the_plan = plan.narrow(the_plan, (name for choice in choices for name in choice.files))
        else:  # every guess in the command was something else: nothing says what to narrow to
            log.info("no dataset among the command's arguments: warming the whole context")
            selection = datasets.Selection((), "none", selection.not_found)
    if job.writable:  # before any reference is looked for or written: another first warm may be filling
        # the cache in another layout. Not sooner: a warm that fails on the bucket's content leaves no trace.
        job.cache = cache = await cache.settle_layout(settings.ref_subdir_mode, job.cover_one)
    if job.leasing and job.gate is None:  # a cache this warm made: the gate, before a reference is looked for
        job.gate = await retention.Gate.enter(cache.root, exclusive=False, log=log)
    to_fetch, corrupt = await job.survey(the_plan.references)
    to_fetch = list(job.unwritten) + to_fetch
    unchecked = [entry.name for entry in the_plan.entries if not entry.sha1]
    outcome = Outcome(settings=settings, cache=cache, context=context, plan=the_plan,
                      to_fetch=to_fetch, from_lower=dict(job.from_lower), progress=progress, unchecked_sha1=unchecked,
                      selection=selection, choices=choices, source=job.bucket.location.uri(""))
    progress.files_total, progress.bytes_total = len(the_plan.entries), the_plan.total_bytes
    log.info("plan", context=context, rules=the_plan.form, mappings=the_plan.mapping_files,
             pickles=the_plan.pickles,
             references=len(the_plan.references),
             bytes=the_plan.total_bytes, fetch_files=len(to_fetch), fetch_bytes=sum(e.size for e in to_fetch),
             **({"lower_files": len(job.from_lower), "lower_bytes": sum(e.size for e in job.from_lower),
                 "lower": list(cache.lowers)} if cache.lowers else {}),
             instruments=list(settings.instruments) or "all", mappings_only=settings.mappings_only,
             durability=job.durability.mode,
             references_for=list(selection.datasets) or "the whole context")
    if unchecked:
        log.warning("the bucket publishes no sha1 for some files: they are checked by size "
                    "(and by the checksum S3 keeps, if any, when fetched in one GET)",
                    count=len(unchecked), first=unchecked[:5])
    if settings.dry_run and not job.offline:  # offline, the plan stands only if the cache needs nothing more
        return outcome
    if job.gate is not None:  # from here on, no prune removes a file of the plan: not while this process lives
        outcome.lease = retention.take_lease(cache.root, cache.observatory, context, job.plan_paths(the_plan))
        job.gate.release()  # the lease protects the plan now: a prune need not wait for the transfer
    if not job.writable:
        lacking = [entry.name for entry in [*to_fetch, *job.from_lower]] + job.config_missing()
        if lacking and job.offline:
            raise CacheError(f"cache {cache.root} lacks {len(lacking)} file(s) of the plan, e.g. {lacking[0]}",
                             "the cache cannot stand in for the source")
        if lacking:
            why, todo = cache.why_unwritable()
            raise CacheError(f"cache {cache.root} {why} and lacks {len(lacking)} file(s), e.g. {lacking[0]}", todo)
        if settings.dry_run:
            return outcome
        log.info("the cache holds every planned file" if job.offline else "read-only cache holds every planned file",
                 files=len(the_plan.entries))
        job.used(context, the_plan)
        return outcome
    cache.check_space(sum(entry.size for entry in to_fetch))
    config_files = job.config_to_write(config)  # written last: a cache with a config is complete
    job.durability.cover([(cache.path(entry), entry.size, entry.sha1) for entry in to_fetch]
                         + [(path, len(data), hashlib.sha1(data).hexdigest()) for path, data in config_files.items()])
    reporter = asyncio.ensure_future(report_periodically(progress, log, settings.progress_interval))
    try:
        await job.link_lower()
        await fetch_all(job.fetcher, cache, to_fetch, corrupt)
    finally:
        reporter.cancel()
    await job.write_config(config_files)
    job.used(context, the_plan)
    if job.kept is not None:  # the warm is done: the same question asked here again need not ask crds
        answers.remember(cache, context, *job.kept)
    outcome.fetched = True
    log.info("warmed", context=context, cache=cache.root, **progress.summary())
    return outcome
