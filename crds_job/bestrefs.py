"""Best references of input datasets, chosen by the real crds library from the warmed rules.

crds-job never reimplements CRDS's matching rules (header conditioning, the
per-instrument hooks, fallbacks): the same library the calibration will use
picks the files, so a selective warm fetches exactly what ``crds bestrefs``
would name. It runs in a child process (``python -m crds_job.bestrefs``) for
four reasons: crds reads its configuration from the environment at import
and keeps global caches, so it gets an environment of its own (offline, on a
scratch CRDS_PATH that holds the verified mappings or pickle); its log output
stays out of our JSON lines; crds is an optional dependency
(``crds-job[crds]``, present in any calibration image), imported only there;
and a context's pickle (``rules``) is code when loaded, so it is loaded there
and never in crds-job's own process. For a pickle the child also lists the
references the context names (``listing``): only what loaded it can say.

Protocol: one JSON request on stdin; the JSON answer goes to a file the
request names (not stdout, where a library's C code or subprocess may write).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import glob
import json
import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import datasets
from .cache import c_function
from .datasets import is_url
from .errors import BucketContentError, CrdsJobError, DatasetError, S3AccessError, UsageError

#: Bytes per read of a remote dataset: headers are read, data blocks skipped.
HEADER_BLOCK = 256 * 1024
#: What crds answers for a type that does not apply to this dataset (its "N/A" and "OMIT").
_NOT_APPLICABLE = "NOT FOUND n/a"
_NOT_FOUND = "NOT FOUND"
_CRDS_MISSING = "crds-missing"
#: crds's value for a key a header does not have.
_UNDEFINED = "UNDEFINED"
#: An HST association table's FILETYPE: its exposures, not the table, are what is calibrated.
_ASSOCIATION = "ASN_TABLE"
#: Seconds crds may take to choose, headers read included, before the warm gives up on it.
TIMEOUT = 900.0
#: Beside the answer, a file the child makes once the context is loaded: a death before it is the rules'.
_LOADED = ".loaded"
#: What to do about a pickle crds cannot load: it holds the classes (and may hold any code) of the crds that made it.
_PICKLE_TODO = ("a pickle holds the classes of the crds version that made it: give the job the crds version the "
                "bucket's pickles are made with, pin another context, or mirror the context's mappings")


@dataclass(frozen=True)
class Choice:
    """What crds chose for one dataset."""

    dataset: str
    instrument: str
    references: dict[str, str]  # reference type -> file
    not_applicable: tuple[str, ...] = ()  # types crds says do not apply (N/A, OMIT)
    unmatched: dict[str, str] = field(default_factory=dict)  # type -> crds's reason: no file matched
    association: str = ""  # the association (HST table, Roman JSON) that lists this exposure, if named by one
    #: type -> {"absent": the match keys the header lacks, "files": every reference the rules may still select}
    candidates: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "instrument": self.instrument, "references": dict(self.references),
                "not_applicable": list(self.not_applicable), "unmatched": dict(self.unmatched),
                "candidates": {kind: dict(found) for kind, found in self.candidates.items()},
                **({"association": self.association} if self.association else {})}

    @property
    def files(self) -> list[str]:
        """Every reference to warm for it: those chosen, and every candidate of the types its header cannot decide."""
        return [*self.references.values(), *(name for found in self.candidates.values() for name in found["files"])]


#: Errors of a read that may pass: s3fs's for S3's 5xx and throttling, a disk's, a network's.
_PASSING_ERRNOS = frozenset({errno.EBUSY, errno.EREMOTEIO, errno.EIO, errno.ETIMEDOUT, errno.EAGAIN})

#: prctl(2)'s request for a signal when the parent dies (Linux).
_PR_SET_PDEATHSIG = 1

_TODO = {
    "missing": "check the path or URL and that the job can read it, or pass --all-references",
    "unreadable": "give a FITS or ASDF dataset, or pass --all-references to warm the whole context",
    "forbidden": "let the job's user read it (its mode, and its folders'), or pass --all-references",
    "bad-url": "check the dataset's URL (s3://BUCKET/KEY), or pass --all-references",
}
#: What a dataset found in the command (a guess) may be without stopping the warm: not a dataset.
_SKIPPABLE = ("missing", "unreadable")


def _skippable(answer: Mapping[str, Any]) -> bool:
    """Whether a guessed dataset's failure says it is no input: absent, unreadable as one, or an
    object S3 refuses, as it refuses a missing key (403, not 404) to a job that may not list the
    bucket, typically an output bucket."""
    return answer.get("error") in _SKIPPABLE or (answer.get("error") == "denied" and is_url(answer["dataset"]))


@dataclass(frozen=True)
class Skipped:
    """A command argument that looked like a dataset but is not one crds can read (an output, a parameter file)."""

    dataset: str
    reason: str


def choice_of(answer: Mapping[str, Any], context: str) -> Choice:
    """A dataset's choice from crds's answer for it (the child's, or one kept in the cache); its error, raised."""
    dataset = answer["dataset"]
    reason = answer.get("error")
    message = answer.get("message", "")
    if answer.get("given") and reason in ("instrument", "unreadable"):  # --header's, not a file's
        raise UsageError(f"{dataset}: " + (f"instrument {answer['instrument']} is not in context {context} (it has "
                                           f"{', '.join(answer['covered'])})" if reason == "instrument" else message),
                         "name one of the context's instruments in --header")
    if reason == "instrument":
        raise DatasetError(
            f"dataset {dataset} is of instrument {answer['instrument']}, which context {context} does not cover "
            f"(it covers {', '.join(answer['covered'])})",
            "pin a context of the dataset's observatory, or check the dataset",
        )
    if reason in ("denied", "access"):
        raise S3AccessError(f"dataset {dataset} cannot be read: {message}",
                            "give the job read access to it" if reason == "denied" else "run the job again")
    if reason == "no-instrument":
        raise UsageError(f"{dataset} names no instrument, and context {context} has several "
                         f"({', '.join(answer['covered'])})", f"add {answer['key']}=INSTRUMENT to --header")
    if reason == "reftypes":
        raise UsageError(f"--reftypes names {', '.join(answer['unknown'])}, which instrument {answer['instrument']} "
                         f"of context {context} has no rules for", f"use some of: {', '.join(answer['known'])}")
    if reason == "backend":
        raise UsageError(f"dataset {dataset} cannot be read here: {message}",
                         "install the fsspec backend of that URL scheme (s3 and http are in the image)")
    if reason == "crds":
        raise BucketContentError(f"crds failed choosing references for {dataset} in {context}: {message}",
                                 "report it with this line; pass --all-references meanwhile")
    if reason:
        raise DatasetError(f"dataset {dataset}: {message}", _TODO.get(reason, _TODO["unreadable"]))
    return Choice(dataset=dataset, instrument=answer["instrument"], references=dict(answer["references"]),
                  not_applicable=tuple(answer["not_applicable"]), unmatched=dict(answer["unmatched"]),
                  association=answer.get("association", ""), candidates=dict(answer.get("candidates", {})))


async def _run_child(request: dict[str, Any], env: Mapping[str, str], answer_path: str) -> dict[str, Any]:
    """The child's answer; its failure to give one, said for what it was asked (datasets, a pickle)."""
    child = await asyncio.create_subprocess_exec(
        # runpy warns that the package's own import loaded this module first: noise in the child's last line.
        sys.executable, "-W", "ignore::RuntimeWarning:runpy", "-m", __name__, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=dict(env),
    )
    datasets, pickle = request["datasets"], request["pickle"]
    doing = "choosing references" if datasets else f"loading the pickle {pickle}"
    instead = ", or pass --all-references" if datasets else ""
    try:
        _, err = await asyncio.wait_for(child.communicate(json.dumps(request).encode()), TIMEOUT)
    except BaseException as exc:  # cancelled (a signal) or too slow: the child goes too
        if child.returncode is None:
            child.kill()
            await child.wait()
        if isinstance(exc, TimeoutError) and datasets:
            raise DatasetError(f"crds did not choose references within {TIMEOUT:.0f} s",
                               "check that the datasets can be read quickly, or pass --all-references") from None
        if isinstance(exc, TimeoutError):  # loading a pickle is seconds: this one runs code that does not end
            raise Unloadable(f"crds did not load the pickle {pickle} within {TIMEOUT:.0f} s", _PICKLE_TODO) from None
        raise
    try:
        with open(answer_path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError):
        pass
    # No answer: the child died outside what it reports (the context, each dataset).
    returncode = child.returncode or 0
    tail = [line for line in err.decode(errors="replace").strip().splitlines() if line.strip()][-1:] or ["no output"]
    if returncode == -signal.SIGKILL:  # the usual out-of-memory kill: the environment's, not the bucket's (65)
        raise CrdsJobError(f"crds was killed by SIGKILL while {doing}",
                           f"give the job more memory (an out-of-memory kill is the usual cause){instead}")
    if pickle and not os.path.exists(answer_path + _LOADED):  # it died loading the pickle: the pickle's doing
        how = f"by {_signal_name(-returncode)}" if returncode < 0 else f"with exit {returncode}"
        raise Unloadable(f"crds died {how} loading the pickle {pickle}: {tail[0][:300]}", _PICKLE_TODO)
    if returncode < 0:
        raise CrdsJobError(f"crds was killed by {_signal_name(-returncode)} while {doing}",
                           f"give the job more memory (an out-of-memory kill is the usual cause){instead}")
    raise CrdsJobError(f"crds failed {doing} (exit {returncode}): {tail[0][:300]}",
                       f"check the job's environment (HOME, TMPDIR) or report it with this line{instead}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name
        return f"signal {number}"


class Unloadable(BucketContentError):
    """crds cannot load the context's rules at all: nothing can be chosen or listed from them."""


@dataclass(frozen=True)
class Answer:
    """What crds said: each dataset's choice, the guesses that are no dataset, and (for a pickle)
    the references the context names, by instrument."""

    choices: list[Choice]
    skipped: list[Skipped]
    listing: dict[str, list[str]] | None = None
    crds: str = ""  # the version of the crds that chose: in a layered image, the calibration's own


async def choose(
    datasets: Sequence[str], context: str, observatory: str, env: Mapping[str, str], anonymous: bool,
    strict: bool, scratch: str, pickle: str = "", listing: bool = False,
    headers: Sequence[tuple[str, Mapping[str, str]]] = (), reftypes: Sequence[str] = (),
) -> Answer:
    """Ask the real crds, in a child process with ``env``, for each dataset's best references.

    ``strict``: every dataset must be read (named with --datasets). Otherwise
    (found in the command) one that is missing or unreadable is skipped.
    ``headers``: (name, header) of datasets with no file (``--header``);
    ``reftypes``: the only types chosen, for all of them.
    ``pickle``: the rules are this pickle, not mappings; ``listing``: also
    list every reference the context names.
    """
    answer_path = os.path.join(scratch, "answer.json")
    request = {"datasets": list(datasets), "context": context, "observatory": observatory,
               "anonymous": anonymous, "answer": answer_path, "parent": os.getpid(), "pickle": pickle,
               "list": listing, "headers": [[name, dict(header)] for name, header in headers],
               "reftypes": list(reftypes)}
    answer = await _run_child(request, env, answer_path)
    if answer.get("fatal") == _CRDS_MISSING:
        needs = (f"loading context {context} from its pickle {pickle} needs the crds library" if pickle else
                 "warming only the datasets' references needs the crds library")
        raise UsageError(f"{needs}, which is not installed ({answer['message']})",
                         "install crds-job[crds] (calibration images have crds)"
                         + ("" if pickle else ", or pass --all-references"))
    if answer.get("fatal") and pickle:
        raise Unloadable(f"crds cannot load context {context} from its pickle {pickle}: {answer['message']}",
                         _PICKLE_TODO)
    if answer.get("fatal"):
        raise Unloadable(f"crds cannot load context {context}: {answer['message']}",
                         "pin another context, or pass --all-references")
    listed = answer.get("listing")
    if listing and not isinstance(listed, dict):
        raise CrdsJobError(f"crds listed no reference of {context}", "report it with this line")
    choices, skipped = [], []
    for one in answer["results"]:
        if one.get("given"):  # a header given as such: meant, as a named dataset is
            choices.append(choice_of(one, context))
        elif not strict and _skippable(one):
            skipped.append(Skipped(one["dataset"], one["message"]))
        elif not strict and not one.get("error") and not one["references"] and not one.get("candidates"):
            # crds read it and chose nothing for it: not an exposure (a catalog, a table), whatever its name
            skipped.append(Skipped(one["dataset"], "crds chose no reference for it: no type applies or matched"))
        else:
            choices.append(choice_of(one, context))
    return Answer(choices, skipped, listed if listing else None, str(answer.get("crds", "")))


# ----- the child: runs under the real crds -----------------------------------------------------


def _filesystem(source: str, anonymous: bool) -> tuple[Any, str]:
    """fsspec's filesystem for a dataset URL, and the URL's path in it."""
    import fsspec

    options = {"anon": True} if anonymous and source.lower().startswith("s3://") else {}
    return fsspec.core.url_to_fs(source, **options)


@contextlib.contextmanager
def _opened(source: str, anonymous: bool) -> Iterator[Any]:
    """A dataset as astropy and crds read it: a local path, or an open file read in blocks."""
    if not is_url(source):
        if not os.path.isfile(source):
            raise FileNotFoundError(source)
        yield source
        return
    import fsspec

    filesystem, path = _filesystem(source, anonymous)
    # Decompressed as it is read (``x_raw.fits.gz``), as astropy does a local file but not a stream.
    compression = fsspec.utils.infer_compression(datasets.base_name(source))
    with filesystem.open(path, "rb", block_size=HEADER_BLOCK, compression=compression) as handle:
        yield handle


def _read_header(crds_io: Any, source: str, observatory: str, anonymous: bool) -> dict[str, Any]:
    """The dataset's header as ``crds bestrefs --files`` reads it (all FITS extensions, the ASDF tree)."""
    name = datasets.crds_name(datasets.base_name(source))
    with _opened(source, anonymous) as opened:
        return crds_io.file_factory(opened, name, observatory).get_header((), checksum=False)


def _is_hst_table(source: str, header: Mapping[str, Any]) -> bool:
    return (str(header.get("FILETYPE", "")).strip().upper() == _ASSOCIATION
            or datasets.base_name(source).lower().endswith("_asn.fits"))


def _association_members(source: str, anonymous: bool) -> tuple[list[str], list[str]]:
    """The raw files of the exposures an HST association table lists, beside it; and the members without one.

    An exposure member (``MEMTYPE`` EXP-..., ``MEMPRSNT``) ``j8bt06o6q`` is
    ``j8bt06o6q_raw.fits`` (``_rawtag_a.fits``... for COS) in the table's folder,
    where calacs.e & co. look for it. Products (PROD-...) are outputs to be.
    """
    from astropy.io import fits

    with _opened(source, anonymous) as opened, fits.open(opened) as hdus:
        names = [str(row["MEMNAME"]).strip().lower() for row in hdus[1].data
                 if str(row["MEMTYPE"]).strip().upper().startswith("EXP") and bool(row["MEMPRSNT"])]
    found = _raw_files(source, names, anonymous)
    return [path for name in names for path in found[name]], [name for name in names if not found[name]]


def _raw_files(table: str, names: list[str], anonymous: bool) -> dict[str, list[str]]:
    """Each member's raw files in ``table``'s folder: a local folder's, or a bucket's listing."""
    if not is_url(table):
        folder = glob.escape(os.path.dirname(table))
        return {name: sorted(glob.glob(os.path.join(folder, f"{name}_raw*.fits"))) for name in names}
    url_folder = _url_folder(table)
    if table.lower().startswith(("http://", "https://")):  # no listing over HTTP: the usual name
        return {name: [f"{url_folder}{name}_raw.fits"] for name in names}
    filesystem, path = _filesystem(table, anonymous)
    folder = path.rsplit("/", 1)[0]
    return {name: sorted(url_folder + match.rsplit("/", 1)[-1]
                         for match in filesystem.glob(f"{folder}/{name}_raw*.fits")) for name in names}


def _url_folder(source: str) -> str:
    """The folder of a dataset's URL, ending with "/", without the URL's query (a presigned signature)."""
    return source.split("?", 1)[0][: -len(datasets.base_name(source))]


def _remote(source: str) -> bool:
    """Whether ``source`` is read from a store (its 403 may pass), not from a file of this machine."""
    return is_url(source) and not source.lower().startswith("file://")


def _read_failure(exc: Exception, url: bool) -> tuple[str, str]:
    """Why a header could not be read: (reason, message), the reason deciding the exit code."""
    text = f"{type(exc).__name__}: {exc}"[:400]
    if isinstance(exc, FileNotFoundError):
        return "missing", "it does not exist"
    if isinstance(exc, PermissionError):  # S3's 403 may pass (a policy, a role); a local file's mode stays
        return ("denied" if url else "forbidden"), text
    sdk = sys.modules.get("botocore.exceptions")  # loaded only if an S3 URL was read
    if sdk is not None and isinstance(exc, sdk.ParamValidationError):  # e.g. a bucket name S3 cannot have
        return "bad-url", text
    if isinstance(exc, ImportError) or "protocol not known" in str(exc).lower():
        return "backend", text
    module = type(exc).__module__
    if module.startswith(("botocore", "aiobotocore", "aiohttp", "s3fs")) or isinstance(exc, (ConnectionError,
                                                                                             TimeoutError)):
        return "access", text
    if isinstance(exc, OSError) and exc.errno in _PASSING_ERRNOS:
        # A store's or a disk's failure, not the file's: s3fs turns S3's 5xx and throttling into
        # OSError(EBUSY, EREMOTEIO...). Its 4xx (EINVAL...) will not pass, nor will astropy's "corrupt FITS".
        return "access", text
    return "unreadable", f"its header cannot be read: {text}"


def _answers(
    crds: Any, pmap: Any, source: str, context: str, observatory: str, anonymous: bool, reftypes: Sequence[str],
) -> list[dict[str, Any]]:
    """The answer for one dataset; for an association (HST's table, Roman's JSON), one for each of its exposures.

    calacs.e and calwf3.e, and romancal's pipelines, calibrate an association's
    members, each by its own header; the association's own header (an HST table's)
    names no exposure's parameters, so crds would choose nothing for it.
    """
    if datasets.is_association(source):
        answer: dict[str, Any] = {"dataset": source, "error": "unreadable", "message": "it lists no exposure"}
        try:
            members, absent = _roman_members(source, anonymous)
        except Exception as exc:
            reason, message = _read_failure(exc, _remote(source))
            return [{"dataset": source, "error": reason, "message": f"it cannot be read as an association: {message}"}]
    else:
        answer = _one(crds, pmap, source, context, observatory, anonymous, reftypes)
        header = answer.pop("header", None)
        if header is None or not _is_hst_table(source, header):
            return [answer]
        try:
            members, absent = _association_members(source, anonymous)
        except Exception as exc:
            reason, message = _read_failure(exc, _remote(source))
            return [{"dataset": source, "error": reason, "message": f"its members cannot be read: {message}"}]
    answers = [{"dataset": source, "error": "missing", "association": source,
                "message": f"association member {name} is not beside it"} for name in absent]
    for member in members:
        found = _one(crds, pmap, member, context, observatory, anonymous, reftypes)
        found.pop("header", None)
        answers.append(dict(found, association=source))
    return answers or [answer]  # an HST table with no exposure present: its own answer, as crds gives it


def _roman_members(source: str, anonymous: bool) -> tuple[list[str], list[str]]:
    """The exposures a Roman association (stpipe's ``*_asn.json``) lists, as paths or URLs beside it; and
    those absent. Each product's members' ``expname``, relative to the association's folder, as romancal
    opens them."""
    with _opened(source, anonymous) as opened:
        if isinstance(opened, str):
            with open(opened, "rb") as handle:
                document = json.load(handle)
        else:
            document = json.load(opened)
    names = [str(member["expname"]) for product in document["products"] for member in product["members"]]
    if is_url(source):
        paths = [name if is_url(name) else _url_folder(source) + name.lstrip("/") for name in names]
        return list(dict.fromkeys(paths)), []
    folder = os.path.dirname(source)
    paths = list(dict.fromkeys(os.path.join(folder, name) for name in names))
    return [path for path in paths if os.path.isfile(path)], [path for path in paths if not os.path.isfile(path)]


def _one(crds: Any, pmap: Any, source: str, context: str, observatory: str, anonymous: bool,
         reftypes: Sequence[str] = ()) -> dict[str, Any]:
    from crds.io import factory

    answer: dict[str, Any] = {"dataset": source}
    try:
        header = _read_header(factory, source, observatory, anonymous)
    except Exception as exc:  # any failure to read: classified, so the exit code says what to do
        reason, message = _read_failure(exc, _remote(source))
        return dict(answer, error=reason, message=message)
    answer["header"] = {key: header[key] for key in ("FILETYPE",) if key in header}
    return _choose(crds, pmap, answer, header, context, observatory, reftypes)


def _of_header(crds: Any, pmap: Any, name: str, header: Mapping[str, str], context: str, observatory: str,
               reftypes: Sequence[str]) -> dict[str, Any]:
    """The answer for a header given as such (``--header``, ``--reftypes``): a dataset with no file.

    Where it names no instrument, the context's only one is meant (Roman's WFI).
    """
    header, answer = dict(header), {"dataset": name, "given": True}
    if pmap.instrument_key not in header:
        if len(pmap.selections) > 1:
            return dict(answer, error="no-instrument", key=pmap.instrument_key, covered=sorted(pmap.selections))
        header[pmap.instrument_key] = next(iter(pmap.selections)).upper()
    return _choose(crds, pmap, answer, header, context, observatory, reftypes)


def _choose(crds: Any, pmap: Any, answer: dict[str, Any], header: Mapping[str, Any], context: str,
            observatory: str, reftypes: Sequence[str]) -> dict[str, Any]:
    """What crds chooses for ``header``: references, types that do not apply, types no file matched;
    and for a type it could not match because the header lacks its keys, every reference it could still
    select (``_candidates``): what a pipeline that asks with a header of its own will want."""
    from crds.core import utils

    try:
        instrument = utils.header_to_instrument(header).lower()
    except Exception as exc:
        return dict(answer, error="unreadable", message=f"its header names no instrument: {exc}"[:400])
    if instrument not in pmap.selections:
        return dict(answer, error="instrument", instrument=instrument, covered=sorted(pmap.selections))
    imap = pmap.get_imap(instrument)
    unknown = sorted(set(reftypes) - set(imap.selections))
    if unknown:
        return dict(answer, error="reftypes", instrument=instrument, unknown=unknown, known=sorted(imap.selections))
    try:
        # As crds bestrefs does: the locator's types for this header, else every type of the instrument.
        types = list(reftypes) or _located_types(utils, header, context, observatory) or sorted(imap.selections)
        found = crds.getrecommendations(header, reftypes=types, context=context, observatory=observatory,
                                        fast=True)
    except Exception as exc:
        return dict(answer, error="crds", message=f"{type(exc).__name__}: {exc}"[:400])
    references, not_applicable, unmatched = {}, [], {}
    for kind, value in sorted(found.items()):
        if value.startswith(_NOT_APPLICABLE):
            not_applicable.append(kind)
        elif value.startswith(_NOT_FOUND):
            unmatched[kind] = value[len(_NOT_FOUND):].strip()
        else:
            references[kind] = value
    candidates = {}
    if unmatched and (references or answer.get("given")):  # a file crds chooses nothing for is no exposure
        conditioned = utils.condition_header(dict(header))  # once: a Roman tree has thousands of keys
        candidates = {kind: undecided for kind in unmatched if (undecided := _candidates(imap, kind, conditioned))}
    return dict(answer, instrument=instrument, references=references, not_applicable=not_applicable,
                unmatched={kind: why for kind, why in unmatched.items() if kind not in candidates},
                candidates=candidates)


def _located_types(utils: Any, header: Mapping[str, Any], context: str, observatory: str) -> list[str]:
    """The types the observatory's locator says this header needs (none: every type, as crds bestrefs)."""
    try:
        return list(utils.get_locator_module(observatory).header_to_reftypes(header, context))
    except Exception:
        return []


def _candidates(imap: Any, kind: str, conditioned: Mapping[str, Any]) -> dict[str, list[str]]:
    """For a type crds found no match for: if that is because the header lacks keys its rmap matches
    on (absent, or UNDEFINED: a row's value for one of them would refuse UNDEFINED), those keys and
    every reference the rmap can still select, each lacking key taking any value and each present key
    its own; else nothing (no file is meant to match, or crds failed for another reason: a date before
    every use-after, a value no row has). A failure here leaves the type unmatched, as before.

    romancal asks for ``dustmap`` by ``ROMAN.FIELD``, a key no exposure carries: the exposure cannot
    say which map, but the rmap says which maps there are.
    """
    try:
        rmap = imap.get_rmap(kind)
        header = rmap._precondition_header(rmap, dict(conditioned))  # crds's hook for the type, as it applies it
        header = rmap.map_irrelevant_parkeys_to_na(rmap.minimize_header(header))
        levels = [tuple(level) if isinstance(level, (tuple, list)) else (level,) for level in rmap.parkey]
        deciding: set[str] = set()
        files = set(_selectable(rmap.selector, header, levels, 0, deciding)) & set(rmap.reference_names())
    except Exception:
        return {}
    return {"absent": sorted(deciding), "files": sorted(files)} if files and deciding else {}


def _selectable(selector: Any, header: Mapping[str, Any], levels: list[tuple[str, ...]], depth: int,
                deciding: set[str]) -> list[str]:
    """The references ``selector`` (at ``depth`` of its rmap's nesting) may select for ``header``: at a
    Match, every row whose values match the keys the header has (crds's own matchers), the others taking
    any value (those whose row values would refuse UNDEFINED are added to ``deciding``); below, what crds
    chooses, or, where it cannot because the header lacks this level's keys (a date), every file."""
    from crds.core import selectors

    keys = levels[depth] if depth < len(levels) else ()
    if not isinstance(selector, selectors.MatchSelector):
        try:
            return [selector.choose(header)]
        except Exception:
            lacking = {key for key in keys if header.get(key, _UNDEFINED) == _UNDEFINED}
            deciding |= lacking
            return list(selector.reference_names()) if lacking else []
    found: list[str] = []
    for row, choice in zip(selector.keys(), selector.choices(), strict=True):
        values = row if isinstance(row, tuple) else (row,)
        matchers = [(key, selectors.matcher(value)) for key, value in zip(keys, values, strict=False)]
        if any(header.get(key, _UNDEFINED) != _UNDEFINED and matcher.match(header[key]) == -1
               for key, matcher in matchers):
            continue
        lacking = {key for key, matcher in matchers
                   if header.get(key, _UNDEFINED) == _UNDEFINED and matcher.match(_UNDEFINED) == -1}
        below = (_selectable(choice, header, levels, depth + 1, deciding) if isinstance(choice, selectors.Selector)
                 else [choice] if isinstance(choice, str) else list(choice))
        if below:
            deciding |= lacking
            found += below
    return found


def _die_with(parent: int) -> None:
    """End this child when the warm that started it ends, even by SIGKILL, which it cannot pass on.

    Otherwise a killed job leaves crds reading datasets for up to the timeout.
    """
    prctl = c_function("prctl", ctypes.c_int, ctypes.c_ulong)
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request could be read
        os._exit(1)


class _Unpickled(Exception):
    """The context's pickle did not give the context: the message says why."""


def _why_unpickled(context: str, failure: Exception) -> str:
    """Why crds could not load ``context`` from its pickle: the pickle's own failure, which crds hides
    behind a fallback to the mappings (absent here, so that fails instead). It loads the pickle once
    more, running its code again: here, in the child, on the failure path only."""
    from crds.core import heavy_client

    try:
        heavy_client.load_pickled_mapping(context)
    except Exception as exc:
        failure = exc
    return f"{type(failure).__name__}: {failure}"[:500]


def _context(crds: Any, context: str, pickled: bool) -> Any:
    """The loaded context: from its mappings, or from its pickle as the calibration's crds loads it
    (``get_symbolic_mapping``, whose result crds keeps: the choices below reuse it, not loading it again)."""
    if not pickled:
        return crds.get_cached_mapping(context)
    from crds.core import heavy_client, rmap

    try:
        loaded = heavy_client.get_symbolic_mapping(context)
    except Exception as exc:
        raise _Unpickled(_why_unpickled(context, exc)) from None
    if not isinstance(loaded, rmap.PipelineContext) or loaded.basename != context:
        raise _Unpickled(f"it holds {type(loaded).__name__} {getattr(loaded, 'basename', '')!r}, "
                         f"not the context {context}")
    return loaded


def _listing(pmap: Any) -> dict[str, list[str]]:
    """Every reference the context names, by instrument (GEIS data partners are the caller's)."""
    return {str(instrument): sorted(imap.reference_names()) for instrument, imap in pmap.selections.normal_items()}


def _libyaml() -> None:
    """Parse YAML with libyaml where PyYAML has it: asdf reads the manifest of every installed extension
    (some 75 documents, in a calibration image) with ``yaml.safe_load``, PyYAML's pure-Python parser, at
    its first file: 0.6 s of a header's 1.5 s. The same safe loader in C gives the same values. Only in
    this child, which reads headers and exits."""
    try:
        import yaml
    except ImportError:
        return
    if getattr(yaml, "__with_libyaml__", False):
        yaml.safe_load = functools.partial(yaml.load, Loader=yaml.CSafeLoader)


def main() -> int:
    """The child: read the request, write the answer to the file it names; crds's chatter goes to stderr."""
    _libyaml()
    request = json.load(sys.stdin)
    _die_with(request["parent"])
    sys.stdout = sys.stderr
    try:
        import crds
    except ImportError as exc:
        answer: dict[str, Any] = {"fatal": _CRDS_MISSING, "message": str(exc)}
    else:
        try:
            pmap = _context(crds, request["context"], bool(request.get("pickle")))
            listing = _listing(pmap) if request.get("list") else None
            open(request["answer"] + _LOADED, "w").close()
        except Exception as exc:  # the context itself: nothing can be chosen from it
            answer = {"fatal": "context",
                      "message": str(exc) if isinstance(exc, _Unpickled) else f"{type(exc).__name__}: {exc}"[:500]}
        else:
            reftypes = request.get("reftypes", [])
            answer = {"results": [one for source in request["datasets"]
                                  for one in _answers(crds, pmap, source, request["context"],
                                                      request["observatory"], request["anonymous"], reftypes)]
                      + [_of_header(crds, pmap, name, header, request["context"], request["observatory"], reftypes)
                         for name, header in request.get("headers", [])]}
            if listing is not None:
                answer["listing"] = listing
        answer["crds"] = str(getattr(crds, "__version__", ""))
    with open(request["answer"], "w", encoding="utf-8") as handle:
        json.dump(answer, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
