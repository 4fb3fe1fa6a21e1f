"""Best references of input datasets, chosen by the real crds library from the warmed mappings.

crds-job never reimplements CRDS's matching rules (header conditioning, the
per-instrument hooks, fallbacks): the same library the calibration will use
picks the files, so a selective warm fetches exactly what ``crds bestrefs``
would name. It runs in a child process (``python -m crds_job.bestrefs``) for
three reasons: crds reads its configuration from the environment at import
and keeps global caches, so it gets an environment of its own (offline, on a
scratch CRDS_PATH that holds the verified mappings); its log output stays out
of our JSON lines; and crds is an optional dependency (``crds-job[crds]``,
present in any calibration image), imported only there.

Protocol: one JSON request on stdin, one JSON answer on stdout.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import DatasetError, UsageError

#: Bytes per read of a remote dataset: headers are read, data blocks skipped.
HEADER_BLOCK = 256 * 1024
#: What crds answers for a type that does not apply to this dataset (its "N/A" and "OMIT").
_NOT_APPLICABLE = "NOT FOUND n/a"
_NOT_FOUND = "NOT FOUND"
_CRDS_MISSING = "crds-missing"


@dataclass(frozen=True)
class Choice:
    """What crds chose for one dataset."""

    dataset: str
    instrument: str
    references: dict[str, str]  # reference type -> file
    not_applicable: tuple[str, ...] = ()  # types crds says do not apply (N/A, OMIT)
    unmatched: dict[str, str] = field(default_factory=dict)  # type -> crds's reason: no file matched

    def report(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "instrument": self.instrument, "references": dict(self.references),
                "not_applicable": list(self.not_applicable), "unmatched": dict(self.unmatched)}


_TODO = {
    "missing": "check the path or URL and that the job can read it, or pass --all-references",
    "unreadable": "give a FITS or ASDF dataset, or pass --all-references to warm the whole context",
}


def _choice(answer: Mapping[str, Any], context: str) -> Choice:
    dataset = answer["dataset"]
    reason = answer.get("error")
    if reason == "instrument":
        raise DatasetError(
            f"dataset {dataset} is of instrument {answer['instrument']}, which context {context} does not cover "
            f"(it covers {', '.join(answer['covered'])})",
            "pin a context of the dataset's observatory, or check the dataset",
        )
    if reason:
        raise DatasetError(f"dataset {dataset}: {answer['message']}", _TODO.get(reason, _TODO["unreadable"]))
    return Choice(dataset=dataset, instrument=answer["instrument"], references=dict(answer["references"]),
                  not_applicable=tuple(answer["not_applicable"]), unmatched=dict(answer["unmatched"]))


async def choose(
    datasets: Sequence[str], context: str, observatory: str, env: Mapping[str, str], anonymous: bool
) -> list[Choice]:
    """Ask the real crds, in a child process with ``env``, for each dataset's best references."""
    request = {"datasets": list(datasets), "context": context, "observatory": observatory, "anonymous": anonymous}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", __name__, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=dict(env),
    )
    try:
        out, err = await child.communicate(json.dumps(request).encode())
    except BaseException:  # cancelled (a signal): the child goes too
        if child.returncode is None:
            child.kill()
            await child.wait()
        raise
    try:
        answer = json.loads(out)
    except json.JSONDecodeError:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise DatasetError(f"crds failed computing best references (exit {child.returncode}): {tail[0][:300]}",
                           "report it with this line, or pass --all-references") from None
    if answer.get("fatal") == _CRDS_MISSING:
        raise UsageError("warming only the datasets' references needs the crds library, which is not installed "
                         f"({answer['message']})",
                         "install crds-job[crds] (calibration images have crds), or pass --all-references")
    if answer.get("fatal"):
        raise DatasetError(f"crds failed computing best references: {answer['message']}",
                           "check the datasets and the context, or pass --all-references")
    return [_choice(one, context) for one in answer["results"]]


# ----- the child: runs under the real crds -----------------------------------------------------


def _read_header(crds_io: Any, source: str, observatory: str, anonymous: bool) -> dict[str, Any]:
    """The dataset's header as ``crds bestrefs --files`` reads it (all FITS extensions, the ASDF tree)."""
    from . import datasets

    name = source.rstrip("/").rsplit("/", 1)[-1]
    if datasets.is_url(source):
        import fsspec

        options = {"anon": True} if anonymous and source.lower().startswith("s3://") else {}
        filesystem, path = fsspec.core.url_to_fs(source, **options)
        with filesystem.open(path, "rb", block_size=HEADER_BLOCK) as handle:
            return crds_io.file_factory(handle, name, observatory).get_header((), checksum=False)
    if not os.path.isfile(source):
        raise FileNotFoundError(source)
    return crds_io.file_factory(source, name, observatory).get_header((), checksum=False)


def _one(crds: Any, source: str, context: str, observatory: str, anonymous: bool) -> dict[str, Any]:
    from crds.core import utils
    from crds.io import factory

    answer: dict[str, Any] = {"dataset": source}
    try:
        header = _read_header(factory, source, observatory, anonymous)
    except FileNotFoundError:
        return dict(answer, error="missing", message="it does not exist")
    except Exception as exc:  # any format error: the dataset cannot be read, say why
        return dict(answer, error="unreadable", message=f"its header cannot be read: {type(exc).__name__}: {exc}"[:400])
    pmap = crds.get_cached_mapping(context)
    try:
        instrument = utils.header_to_instrument(header).lower()
    except Exception as exc:
        return dict(answer, error="unreadable", message=f"its header names no instrument: {exc}"[:400])
    if instrument not in pmap.selections:
        return dict(answer, error="instrument", instrument=instrument, covered=sorted(pmap.selections))
    # As crds bestrefs does: the locator's types for this header, else every type of the instrument.
    try:
        types = list(utils.get_locator_module(observatory).header_to_reftypes(header, context))
    except Exception:
        types = []
    types = types or sorted(pmap.get_imap(instrument).selections)
    found = crds.getrecommendations(header, reftypes=types, context=context, observatory=observatory, fast=True)
    references, not_applicable, unmatched = {}, [], {}
    for kind, value in sorted(found.items()):
        if value.startswith(_NOT_APPLICABLE):
            not_applicable.append(kind)
        elif value.startswith(_NOT_FOUND):
            unmatched[kind] = value[len(_NOT_FOUND):].strip()
        else:
            references[kind] = value
    return dict(answer, instrument=instrument, references=references, not_applicable=not_applicable,
                unmatched=unmatched)


def main() -> int:
    """The child: read the request, answer on the real stdout; crds's own chatter goes to stderr."""
    request = json.load(sys.stdin)
    out, sys.stdout = sys.stdout, sys.stderr
    try:
        import crds
    except ImportError as exc:
        answer: dict[str, Any] = {"fatal": _CRDS_MISSING, "message": str(exc)}
    else:
        try:
            answer = {"results": [_one(crds, source, request["context"], request["observatory"],
                                       request["anonymous"]) for source in request["datasets"]]}
        except Exception as exc:  # crds itself failed: the parent turns it into one clear line
            answer = {"fatal": "crds", "message": f"{type(exc).__name__}: {exc}"[:500]}
    out.write(json.dumps(answer))
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
