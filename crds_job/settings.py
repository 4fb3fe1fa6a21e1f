"""Every setting of crds-job: its flag, its environment twin, its default.

A job is configured the way its platform makes easy: argv in ``docker run``,
environment variables in a Kubernetes manifest or an AWS Batch job definition.
Each option therefore has a twin ``CRDS_JOB_<OPTION>``; argv wins over the
twin, the twin over the crds client's own variable (``CRDS_CONTEXT``,
``CRDS_PATH``, ...) where one exists, and that over the default. The table
``OPTIONS`` is the only list of them: the argument parser, docs/usage.md's table
and the tests that keep Dockerfile, k8s and Terraform honest all read it.

The command line is ``crds-job [OPTIONS] OBSERVATORY ENVIRONMENT [--] [COMMAND...]``.
Our options end where the command begins, so the command keeps its own flags.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from . import environments
from .errors import UsageError

ENV_PREFIX = "CRDS_JOB_"
OBSERVATORY_ENV = ENV_PREFIX + "OBSERVATORY"
ENVIRONMENT_ENV = ENV_PREFIX + "ENVIRONMENT"

#: Where the cache goes when neither --cache nor CRDS_PATH says (crds_s3_set's default).
DEFAULT_CACHE = "/tmp/crds_cache"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_bool(text: str) -> bool:
    """Read a boolean the ways people write one in YAML and shell."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}, got {text!r}")


#: Below this a part size or memory budget is most likely a size meant in MiB: said in the log.
TINY_BYTES = 4096


def parse_size(text: str) -> int:
    """Read a byte count: ``8388608``, ``8M``, ``8MiB`` (binary multiples)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"expected a byte count such as 8MiB, got {text!r}")
    number, unit = int(match.group(1)), match.group(2).lower()
    return number * 1024 ** " kmgt".index(unit or " ")


def _positive(cast: Callable[[str], Any], most: float, shown: str = "") -> Callable[[str], Any]:
    """A parser of numbers in (0, ``most``]: nan passes "<= 0", and inf or 10**400 would spin a
    timer, overflow one, or reach the SDK's pools and retry loops as nonsense."""
    def parse(text: str) -> Any:
        value = cast(text)
        if not 0 < value <= most or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"expected a positive number up to {shown or f'{most:g}'}, got {text[:40]!r}")
        return value

    return parse


def parse_list(text: str) -> tuple[str, ...]:
    """Read ``a,b c`` as ``("a", "b", "c")``: commas or blanks, case folded."""
    return tuple(item.lower() for item in re.split(r"[,\s]+", text.strip()) if item)


def parse_header(text: str) -> tuple[tuple[str, str], ...]:
    """Read ``roman.meta.instrument.detector=WFI01,roman.field=north`` as (KEY, value) pairs, keys in
    upper case as crds conditions them, values as written (a date keeps its blank)."""
    pairs = []
    for item in filter(None, (part.strip() for part in re.split(r"[,\n]+", text))):
        key, equals, value = item.partition("=")
        if not equals or not key.strip() or not value.strip():
            raise ValueError(f"expected KEY=VALUE pairs, comma separated, got {item[:80]!r}")
        pairs.append((key.strip().upper(), value.strip()))
    return tuple(pairs)


def parse_url(text: str) -> str:
    """An http(s) URL, without a trailing slash (the protocol's paths are appended to it)."""
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", text):
        raise ValueError(f"expected an http:// or https:// URL, got {text[:80]!r}")
    return text.rstrip("/")


def parse_dirs(text: str) -> tuple[str, ...]:
    """Read ``/efs/crds:/baked`` as folders, in order: separated as PATH is."""
    return tuple(item for item in text.split(os.pathsep) if item.strip())


def parse_paths(text: str) -> tuple[str, ...]:
    """Read ``a.fits,s3://b/c.asdf`` as paths or URLs: commas or newlines, case kept."""
    return tuple(item.strip() for item in re.split(r"[,\n]+", text) if item.strip())


@dataclass(frozen=True)
class Option:
    """One setting: how it is spelled on argv and in the environment."""

    name: str  # attribute of Settings
    help: str
    parse: Callable[[str], Any] = str
    default: Any = None
    flag_value: bool = False  # a switch: present on argv means True
    crds_env: str | None = None  # the crds client's own variable, read after the twin
    choices: tuple[str, ...] | None = None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("context", "CRDS context to warm: a .pmap name, or latest / <obs>-operational "
           "(default: CRDS_CONTEXT, else the bucket's latest context)",
           crds_env="CRDS_CONTEXT", metavar="PMAP"),
    Option("cache", "the CRDS cache directory to fill", default=DEFAULT_CACHE,
           crds_env="CRDS_PATH", metavar="DIR"),
    Option("lower", "read-only caches under --cache, in order (':' separated): a reference one of them holds "
           "is linked, not fetched", parse=parse_dirs, default=(), metavar="DIR:..."),
    Option("instruments", "warm only these instruments' references (comma separated)",
           parse=parse_list, default=(), metavar="A,B"),
    Option("datasets", "warm only the references these input datasets need (FITS/ASDF paths or "
           "s3:// URLs, comma separated, $VARIABLES expanded; default: the dataset files among COMMAND's "
           "arguments)",
           parse=parse_paths, default=(), metavar="PATH,..."),
    Option("reftypes", "warm only references of these types (comma separated); with no dataset, every "
           "reference of these types that --header allows: for a command that builds its own header (a simulator)",
           parse=parse_list, default=(), metavar="T1,T2"),
    Option("header", "a header the command will ask crds with, KEY=VALUE pairs (comma separated): its references "
           "are warmed as a dataset's would be", parse=parse_header, default=(), metavar="KEY=VALUE,..."),
    Option("all_references", "warm every reference of the context even when COMMAND names datasets",
           parse=parse_bool, default=False, flag_value=True),
    Option("mappings_only", "warm the context's rules (its mappings, or its pickle), no references",
           parse=parse_bool, default=False, flag_value=True),
    Option("concurrency", "S3 requests in flight at once",
           parse=_positive(int, 4096), default=32, metavar="N"),
    Option("part_size", "size of the ranged GETs a large file is split into",
           parse=_positive(parse_size, 2**40, "1TiB"), default=8 * 2**20, metavar="BYTES"),
    Option("memory_budget", "bytes of downloaded data held in memory at most",
           parse=_positive(parse_size, 2**40, "1TiB"), default=64 * 2**20, metavar="BYTES"),
    Option("retries", "attempts per S3 request and per file before giving up",
           parse=_positive(int, 100), default=5, metavar="N"),
    Option("patience", "how long S3 may throttle the job with no file completing before it gives up (exit 69): "
           "throttling slows the job down, it does not count as a failed attempt",
           parse=_positive(float, 86400), default=300.0, metavar="SECONDS"),
    Option("dry_run", "print the plan (files, bytes, what is cached) as JSON on stdout; "
           "fetch nothing, run nothing", parse=parse_bool, default=False, flag_value=True),
    Option("prune", "prune the cache instead of warming it: keep what --keep-contexts, --keep and --max-bytes "
           "say, and every file a running warm or command may open; with --dry-run, only say what would go",
           parse=parse_bool, default=False, flag_value=True),
    Option("keep_contexts", "--prune: keep the files of the N contexts most recently warmed here",
           parse=_positive(int, 10**6), metavar="N"),
    Option("keep", "--prune: keep the files of these contexts (comma separated), warmed here",
           parse=parse_list, default=(), metavar="PMAP,..."),
    Option("max_bytes", "--prune: remove the least recently used references until they hold at most this",
           parse=_positive(parse_size, 2**60, "1EiB"), metavar="BYTES"),
    Option("verify_existing", "re-hash files already in the cache instead of trusting their size",
           parse=parse_bool, default=False, flag_value=True),
    Option("allow_fetch", "let the command's crds fetch cache misses from S3 "
           "(default: the command runs offline from the cache)",
           parse=parse_bool, default=False, flag_value=True),
    Option("require_source", "fail (exit 69) when the source (S3, the CRDS server) cannot be reached, even "
           "where the cache is already complete for the context asked for (default: then warn and run the "
           "command offline)",
           parse=parse_bool, default=False, flag_value=True),
    Option("pickles", "where the bucket holds a context as a pickle and no mappings (STScI's HST buckets), "
           "let the crds library load it, in a child process and in the command; --no-pickles refuses "
           "such a bucket (a pickle is code when loaded)", parse=parse_bool, default=True),
    Option("ref_subdir_mode", "reference layout of a new cache (an existing cache keeps its own)",
           crds_env="CRDS_REF_SUBDIR_MODE", choices=("flat", "instrument")),
    Option("source", "where files come from: s3 (the bucket), server (the observatory's CRDS server, over "
           "HTTPS), or auto: the bucket where there is one and it holds the context, else the server",
           default="auto", choices=("auto", "s3", "server")),
    Option("server", "the CRDS server to read (default: CRDS_SERVER_URL unless it is a 'serverless' one, "
           "else STScI's for OBSERVATORY/ENVIRONMENT)", crds_env="CRDS_SERVER_URL",
           metavar="URL"),
    Option("bucket", "S3 bucket of a private mirror (default: STScI's for OBSERVATORY/ENVIRONMENT)",
           crds_env="CRDS_S3_BUCKET", metavar="NAME"),
    Option("prefix", "key prefix in that bucket, e.g. /roman/crds ('/' for none)",
           crds_env="CRDS_S3_PREFIX", metavar="PREFIX"),
    Option("env_file", "also write the command's CRDS environment to this file "
           "(shell syntax), for a calibration container that runs after an init container",
           metavar="PATH"),
    Option("fsync", "make files survive a crash of the machine: on a local disk through a journal "
           "of the files a warm writes, checked after a crash; elsewhere by an fsync of each file",
           parse=parse_bool, default=True),
    Option("fsync_each", "fsync each file before its rename even on a local disk, keeping no journal",
           parse=parse_bool, default=False, flag_value=True),
    Option("progress_interval", "seconds between progress lines",
           parse=_positive(float, 86400), default=5.0, metavar="SECONDS"),
    Option("log_format", "json lines (default) or human-readable console lines on stderr",
           default="json", choices=("json", "console")),
    Option("log_level", "least severe log level written", default="info",
           choices=("debug", "info", "warning", "error")),
)

OPTION_BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one run: no secret is ever among them.

    Built by ``parse``; the defaults live in ``OPTIONS`` and nowhere else.
    """

    observatory: str
    environment: str
    command: tuple[str, ...]
    context: str | None
    cache: str
    lower: tuple[str, ...]
    instruments: tuple[str, ...]
    datasets: tuple[str, ...]
    reftypes: tuple[str, ...]
    header: tuple[tuple[str, str], ...]
    all_references: bool
    mappings_only: bool
    concurrency: int
    part_size: int
    memory_budget: int
    retries: int
    patience: float
    dry_run: bool
    prune: bool
    keep_contexts: int | None
    keep: tuple[str, ...]
    max_bytes: int | None
    verify_existing: bool
    allow_fetch: bool
    require_source: bool
    pickles: bool
    ref_subdir_mode: str | None
    source: str
    server: str | None
    bucket: str | None
    prefix: str | None
    env_file: str | None
    fsync: bool
    fsync_each: bool
    progress_interval: float
    log_format: str
    log_level: str
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def location(self) -> environments.Location:
        return environments.locate(self.observatory, self.environment, self.bucket, self.prefix)

    @property
    def server_url(self) -> str:
        """The CRDS server this job would read: as set, else STScI's."""
        return self.server or environments.server_url(self.observatory, self.environment)

    def doubts(self) -> list[str]:
        """Values that are valid but most likely not what was meant: said in the log, not refused.

        A bare number is bytes, so ``--memory-budget 64`` (64 MiB meant) lets one
        byte range of 64 bytes at a time through: a warm of hours, not seconds.
        """
        doubts = [f"{OPTION_BY_NAME[name].flag} is {getattr(self, name)} bytes: a bare number counts bytes "
                  f"(write {getattr(self, name)}MiB for mebibytes)"
                  for name in ("part_size", "memory_budget") if getattr(self, name) < TINY_BYTES]
        if self.sources.get("server", "").endswith("(ignored: not a URL)"):
            doubts.append("CRDS_SERVER_URL is not a URL: ignored, STScI's CRDS server is read if a server is needed")
        stscis = environments.server_url(self.observatory, self.environment)
        if self.server and ".stsci.edu" in self.server and self.server != stscis:
            doubts.append(f"the CRDS server set ({self.server}, from {self.sources.get('server')}) is not STScI's "
                          f"for {self.observatory} {self.environment}, {stscis}")
        return doubts

    def describe(self) -> dict[str, Any]:
        """The settings as logged at start-up, with where each value came from."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sources"}
        values["command"] = list(self.command)
        values["instruments"] = list(self.instruments)
        values["datasets"] = list(self.datasets)
        values["reftypes"] = list(self.reftypes)
        values["header"] = {key: value for key, value in self.header}
        values["lower"] = list(self.lower)
        values["keep"] = list(self.keep)
        return {"settings": values, "from": dict(self.sources)}


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (exit 64) instead of exiting with 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, "see crds-job --help")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="crds-job",
        allow_abbrev=False,  # --dry is not --dry-run: a pipeline's arguments mean exactly what they say
        usage="crds-job [OPTIONS] OBSERVATORY ENVIRONMENT [--] [COMMAND [ARGS...]]",
        description="Warm a CRDS cache from S3, every file size- and sha1-checked, "
        "then exec COMMAND with an environment that makes crds use that cache offline.",
        epilog=f"Every option has an environment twin {ENV_PREFIX}<OPTION> "
        f"(e.g. {OPTION_BY_NAME['dry_run'].env}=1); OBSERVATORY and ENVIRONMENT may come "
        f"from {OBSERVATORY_ENV} and {ENVIRONMENT_ENV}. Exit codes: see docs/exit-codes.md.",
    )
    for option in OPTIONS:
        twin = f" [env {option.env}" + (f", then {option.crds_env}" if option.crds_env else "") + "]"
        kwargs: dict[str, Any] = {"dest": option.name, "default": None, "help": option.help + twin}
        if option.flag_value:
            kwargs["action"] = "store_const"
            kwargs["const"] = "1"
        elif option.parse is parse_bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = option.metavar
            if option.choices:
                kwargs["choices"] = option.choices
        parser.add_argument(option.flag, **kwargs)
    parser.add_argument("--version", action="version", version=f"crds-job {_version()}")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _version() -> str:
    """The installed distribution's version: what an image's crds-job reports in a bug report."""
    try:
        return importlib.metadata.version("crds-job")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "(not installed)"


def _resolve(option: Option, argv_value: Any, environ: Mapping[str, str]) -> tuple[Any, str]:
    """Pick one option's value by precedence, and say where it came from."""
    if isinstance(argv_value, str) and not argv_value.strip():
        # Most likely '--cache "$UNSET"': taken as given, it would warm into the current folder (and
        # '--prefix "$UNSET"' read the bucket's root). No prefix is '/', on argv as in the environment.
        raise UsageError(f"{option.flag} is given an empty value",
                         f"give it a value, or leave it out for {option.env} or the default")
    if argv_value is not None:
        raw, source = argv_value, "argv"
    elif environ.get(option.env, "").strip():
        raw, source = environ[option.env], option.env
    elif option.crds_env and environ.get(option.crds_env, "").strip():
        raw, source = environ[option.crds_env], option.crds_env
    else:
        return option.default, "default"
    if isinstance(raw, bool):  # BooleanOptionalAction on argv
        return raw, source
    try:
        value = option.parse(raw.strip())
    except ValueError as exc:
        raise UsageError(f"bad value for {option.flag} (from {source}): {exc}",
                         f"see crds-job --help for {option.flag}") from None
    if option.choices and value not in option.choices:
        raise UsageError(f"bad value {raw!r} for {option.flag} (from {source})",
                         f"use one of: {', '.join(option.choices)}")
    return value, source


def _is_observatory(token: str) -> bool:
    return token.lower() in environments.ENVIRONMENTS


def _split_positionals(
    parser: argparse.ArgumentParser, rest: list[str], environ: Mapping[str, str], parsed: dict[str, Any]
) -> tuple[str, str, list[str], dict[str, str]]:
    """Take OBSERVATORY and ENVIRONMENT from argv, else from their twins; the rest is the command.

    A first token that names an observatory starts the positionals; anything
    else (or ``--``) starts the command, with the two values from the env.
    Options may also follow the two positionals, until ``--`` or the command.
    """
    sources: dict[str, str] = {}
    if rest and rest[0] != "--" and _is_observatory(rest[0]):
        observatory, rest = rest[0], rest[1:]
        sources["observatory"] = "argv"
        if rest and rest[0] != "--" and not rest[0].startswith("-"):
            environment, rest = rest[0], rest[1:]
            sources["environment"] = "argv"
        elif environ.get(ENVIRONMENT_ENV, "").strip():
            environment, sources["environment"] = environ[ENVIRONMENT_ENV].strip(), ENVIRONMENT_ENV
        else:
            raise UsageError("ENVIRONMENT is missing after OBSERVATORY",
                             f"add one, e.g. 'crds-job {observatory} ops', or set {ENVIRONMENT_ENV}")
        if rest and rest[0].startswith("-") and rest[0] != "--":
            more = vars(parser.parse_args(rest))
            rest = more.pop("rest")
            parsed.update({k: v for k, v in more.items() if v is not None})
    else:
        observatory = environ.get(OBSERVATORY_ENV, "").strip()
        environment = environ.get(ENVIRONMENT_ENV, "").strip()
        if not observatory:
            first = rest[0] if rest and rest[0] != "--" else None
            if first is not None:
                raise UsageError(f"unknown observatory {first!r}",
                                 f"use one of: {', '.join(environments.ENVIRONMENTS)}, or set "
                                 f"{OBSERVATORY_ENV} and put the command after --")
            raise UsageError("OBSERVATORY and ENVIRONMENT are missing",
                             f"run e.g. 'crds-job roman ops', or set {OBSERVATORY_ENV} and {ENVIRONMENT_ENV}")
        if not environment:
            raise UsageError(f"{ENVIRONMENT_ENV} is missing while {OBSERVATORY_ENV} is set",
                             f"set it to one of the environments of {observatory}")
        sources["observatory"], sources["environment"] = OBSERVATORY_ENV, ENVIRONMENT_ENV
    if rest and rest[0] == "--":
        rest = rest[1:]
    if rest and not rest[0].strip():
        raise UsageError("the command to run is an empty word (an unset variable?)",
                         "give the command after ENVIRONMENT, or nothing to only warm the cache")
    return observatory, environment, rest, sources


def _expanded(path: str, environ: Mapping[str, str]) -> str:
    """``path`` with its ``$VARIABLES`` taken from ``environ``, as a shell would, and none left unset.

    So that one job definition names each array child's own exposure, strictly
    (``/data/exposure-${AWS_BATCH_JOB_ARRAY_INDEX}.asdf``), where no shell runs
    to expand it: a Batch environment override, a Kubernetes ConfigMap.
    """
    try:
        return string.Template(path).substitute(environ)
    except KeyError as exc:
        raise UsageError(f"--datasets names ${exc.args[0]}, which is not set", "set it, or name the dataset "
                         "without it") from None
    except ValueError:
        raise UsageError(f"--datasets {path!r} has a $ that starts no variable name",
                         "write $$ for a $ of the name itself") from None


def parse(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve the settings of one run from argv and the environment."""
    environ = os.environ if environ is None else environ
    parser = build_parser()
    parsed = vars(parser.parse_args(list(argv)))
    rest = parsed.pop("rest")
    observatory, environment, command, sources = _split_positionals(parser, rest, environ, parsed)
    location = environments.locate(observatory, environment)  # refuses unknown names early
    values: dict[str, Any] = {}
    for option in OPTIONS:
        values[option.name], sources[option.name] = _resolve(option, parsed.get(option.name), environ)
    if values["context"]:
        values["context"] = values["context"].strip()
    values["cache"] = os.path.abspath(os.path.expanduser(values["cache"]))
    values["lower"] = tuple(os.path.abspath(os.path.expanduser(path)) for path in values["lower"])
    values["datasets"] = tuple(_expanded(path, environ) for path in values["datasets"])
    values["server"], sources["server"] = _server(values["server"], sources["server"], values["source"] == "server"
                                                  or not (location.bucket or values["bucket"]))
    if values["source"] == "s3" and not location.bucket and not values["bucket"]:
        raise UsageError(f"{location.observatory} has no CRDS cache on S3, and --source s3 asks for one",
                         "drop --source (its CRDS server is then read), or name a mirror with --bucket")
    clashes = {("fsync_each", "fsync"): values["fsync_each"] and not values["fsync"],
               ("mappings_only", "all_references"): values["mappings_only"] and values["all_references"]}
    for pair, clash in clashes.items():
        if clash:  # neither may silently win: the job would not do what one of them says
            given = [_as_given(name, values[name]) + f" (from {sources[name]})" for name in pair]
            raise UsageError(f"{given[0]} cannot be combined with {given[1]}", "drop one of them")
    retention = [OPTION_BY_NAME[name].flag for name in ("keep_contexts", "keep", "max_bytes") if values[name]]
    if values["prune"] and not retention:
        raise UsageError("--prune needs to be told what to keep", "add --keep-contexts N, --keep PMAP,... "
                         "or --max-bytes BYTES")
    if retention and not values["prune"]:
        raise UsageError(f"{', '.join(retention)} only apply to --prune", "add --prune, or drop them")
    if values["prune"] and command:
        raise UsageError("--prune runs no command", "prune in a job of its own, then run the command")
    for selective in ("datasets", "reftypes", "header"):
        clash = [OPTION_BY_NAME[name].flag for name in ("all_references", "mappings_only", "instruments")
                 if values[name]]
        if values[selective] and clash:
            flag = OPTION_BY_NAME[selective].flag
            raise UsageError(f"{flag} cannot be combined with {', '.join(clash)}",
                             f"{flag} narrows the warm to what it names: drop {flag} or the others")
    return Settings(
        observatory=location.observatory,
        environment=location.environment,
        command=tuple(command),
        sources=sources,
        **values,
    )


def _server(url: str | None, source: str, read: bool) -> tuple[str | None, str]:
    """The CRDS server set, checked, and where it came from; ``read``: it is surely read (else only
    if a bucket lacks a pinned context). The crds client's own ``CRDS_SERVER_URL`` is whatever an image
    or crds_s3_set left set: a 'serverless' one names no server, and one that is no URL stops a job
    only if it reads a server (said in the log otherwise)."""
    if url is None:
        return None, source
    own = source == "CRDS_SERVER_URL"
    if "serverless" in url:
        if own:  # what an offline crds is given: crds-job's own, or crds_s3_set's
            return None, "default"
        raise UsageError(f"--server {url} (from {source}) is a 'serverless' URL, which the crds protocol "
                         "reserves for no server at all", "name a real CRDS server, or leave it out for STScI's")
    try:
        return parse_url(url), source
    except ValueError as exc:
        if own and not read:
            return None, f"{source} (ignored: not a URL)"
        raise UsageError(f"bad value for --server (from {source}): {exc}",
                         "name a CRDS server by its URL, e.g. https://jwst-crds.stsci.edu") from None


def _as_given(name: str, value: Any) -> str:
    """How a switch's value is written on argv: ``--fsync-each``, ``--no-fsync``."""
    flag = OPTION_BY_NAME[name].flag
    return flag if value is not False else "--no-" + flag[2:]


def env_names() -> list[str]:
    """Every environment variable crds-job reads, for documentation and drift tests."""
    names = [OBSERVATORY_ENV, ENVIRONMENT_ENV]
    for option in OPTIONS:
        names.append(option.env)
        if option.crds_env:
            names.append(option.crds_env)
    return names


def _default_text(option: Option) -> str:
    value = option.default
    if value is None or value == ():
        return {"instruments": "all", "datasets": "from COMMAND", "reftypes": "all"}.get(option.name, "—")
    if option.parse is not str and isinstance(value, int) and not isinstance(value, bool) and value >= 2**20:
        return f"{value // 2**20}MiB"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def markdown_table() -> str:
    """The option table of docs/usage.md, generated from OPTIONS (a test keeps them equal)."""
    rows = ["| option | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for option in OPTIONS:
        if option.flag_value:
            flag = option.flag
        elif option.parse is parse_bool:
            flag = f"{option.flag} / --no-{option.flag[2:]}"
        else:
            flag = f"{option.flag} {option.metavar or '|'.join(option.choices or ('VALUE',))}"
        env = f"`{option.env}`" + (f", then `{option.crds_env}`" if option.crds_env else "")
        flag, meaning = flag.replace("|", "\\|"), option.help.replace("|", "\\|")
        rows.append(f"| `{flag}` | {env} | {_default_text(option)} | {meaning} |")
    return "\n".join(rows)
