"""HST as STScI serves it: a bucket of pickled contexts and references, and no mappings.

The pickles are made by the real crds library, as ``crds sync --save-pickles``
makes them (``sample.pickles``), from mappings modeled on crds's own HST specs
(``sample.context.HST``: ACS, WFC3, WFPC2's GEIS pairs; ``Match`` of
``UseAfter``), and uploaded to a local S3 server without the mappings. What
crds-job makes of it is judged by the real crds, offline: ``crds bestrefs``
and ``crds.getreferences`` with every socket refused.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
from conftest import assert_cache_verified, cache_files, new_bucket, parse_logs
from faults import FaultProxy, Rule
from test_crds_acceptance import NO_NETWORK
from test_datasets import HST_CALIBRATION, hst_association, references_in

from crds_job import environments, launch
from crds_job.errors import ExitCode
from crds_job.sample import context, pickles
from crds_job.sample import datasets as sample_datasets

pytest.importorskip("crds", reason="the crds library is in the test extra: it makes and loads the pickles")

@pytest.fixture(scope="module")
def hst_sample() -> context.SampleBucket:
    """Two HST contexts, pickled by crds (made once: the sample is the same every time)."""
    return pickles.pickled(context.hst())


def pickled_bucket(s3, tmp_path, sample: context.SampleBucket, mappings: bool = False, listed: bool = False):
    sample = context.SampleBucket(**{**vars(sample), "with_mappings": mappings, "pickles_listed": listed})
    return new_bucket(s3, sample, str(tmp_path / "cache"), prefix="")


@pytest.fixture
def hst_bucket(s3, tmp_path, hst_sample):
    return pickled_bucket(s3, tmp_path, hst_sample)


def only_error(run) -> str:
    assert len(run.errors) == 1, run.stderr
    return run.errors[0]["event"]


def pickles_in(cache: str) -> dict[str, int]:
    return {os.path.basename(p): size for p, size in cache_files(cache).items() if p.startswith("pickles")}


def test_a_pickle_only_bucket_is_warmed_whole_with_no_flag(hst_bucket):
    latest = hst_bucket.sample.contexts[-1]
    run = hst_bucket.run("hst", "ops")
    assert run.returncode == 0, run.stderr
    plan = run.event("plan")
    assert (plan["rules"], plan["mappings"], plan["pickles"]) == ("pickle", 0, 1)
    assert pickles_in(hst_bucket.cache) == {f"{latest}.pkl": len(hst_bucket.sample.pickles[f"{latest}.pkl"])}
    assert references_in(hst_bucket.cache) == hst_bucket.sample.references_of[latest], "GEIS .r4d partners too"
    assert not [p for p in cache_files(hst_bucket.cache) if p.startswith("mappings")]
    assert_cache_verified(hst_bucket.cache, hst_bucket.sample)
    # download_metadata does not list the pickle: the log says what it was checked by.
    assert "S3's own checksum" in run.event("the bucket holds the context as a pickle, without mappings: crds "
                                            "will load it, in a child process")["check"]
    assert f"{latest}.pkl" in run.event("the bucket publishes no sha1 for some files: they are checked by size "
                                        "(and by the checksum S3 keeps, if any, when fetched in one GET)")["first"]
    again = hst_bucket.run("hst", "ops")
    assert again.returncode == 0 and again.event("plan")["fetch_files"] == 0


def test_instruments_narrow_a_pickled_contexts_references(hst_bucket):
    run = hst_bucket.run("hst", "ops", "--instruments", "wfpc2", "--ref-subdir-mode", "instrument")
    assert run.returncode == 0, run.stderr
    wfpc2 = {name for name in hst_bucket.sample.references_of[hst_bucket.sample.contexts[-1]] if name[8] == "u"}
    assert wfpc2 and references_in(hst_bucket.cache) == wfpc2, "WFPC2's references (CDBS names: u), all of them"
    assert {os.path.dirname(p) for p in cache_files(hst_bucket.cache) if p.startswith("references")} == {
        os.path.join("references", "hst", "wfpc2")}
    for extra in ((), ("--mappings-only",)):
        unknown = hst_bucket.run("hst", "ops", "--instruments", "nircam", *extra)
        assert unknown.returncode == ExitCode.USAGE and "use some of: acs, wfc3, wfpc2" in only_error(unknown)


def test_mappings_only_warms_the_pickle_alone(hst_bucket):
    run = hst_bucket.run("hst", "ops", "--mappings-only")
    assert run.returncode == 0, run.stderr
    assert (run.event("plan")["pickles"], run.event("plan")["references"]) == (1, 0)
    assert pickles_in(hst_bucket.cache) and not references_in(hst_bucket.cache)
    assert not [p for p in cache_files(hst_bucket.cache) if p.startswith("mappings")], "no GET of a pmap not there"


def test_dry_run_prints_a_pickle_only_buckets_plan_and_writes_nothing(hst_bucket):
    run = hst_bucket.run("hst", "ops", "--dry-run")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    latest = hst_bucket.sample.contexts[-1]
    assert report["rules"] == "pickle" and report["totals"]["pickles"] == 1 and report["totals"]["mappings"] == 0
    pickled = [f for f in report["files"] if f["kind"] == "pickle"]
    assert [(f["name"], f["path"], f["cached"]) for f in pickled] == [
        (f"{latest}.pkl", f"pickles/hst/{latest}.pkl", False)]
    assert {f["name"] for f in report["files"] if f["kind"] == "reference"} == hst_bucket.sample.references_of[latest]
    assert report["totals"]["bytes"] == sum(f["size"] for f in report["files"])
    assert not cache_files(hst_bucket.cache), "a dry run writes nothing"


def test_selective_warm_gets_exactly_what_crds_bestrefs_picks_from_the_pickle(hst_bucket, hst_datasets):
    files = [hst_datasets["ACS"], hst_datasets["WFC3"]]
    run = hst_bucket.run("hst", "ops", "--datasets", ",".join(files))
    assert run.returncode == 0, run.stderr
    expected = hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]]
    assert references_in(hst_bucket.cache) == set(expected["acs"].values()) | set(expected["wfc3"].values())
    chosen = {line["dataset"]: line["references"] for line in run.events("best references")}
    assert chosen == {files[0]: expected["acs"], files[1]: expected["wfc3"]}
    assert_cache_verified(hst_bucket.cache, hst_bucket.sample)
    # The real crds bestrefs, after the fact and offline, on the warmed cache, picks the same files.
    location = environments.locate("hst", "ops", hst_bucket.name, hst_bucket.prefix)
    env = launch.apply(hst_bucket.env(), launch.crds_environment(
        location, hst_bucket.cache, hst_bucket.sample.contexts[-1], "flat", allow_fetch=False, pickled=True))
    out = os.path.join(hst_bucket.cache, os.pardir, "bestrefs.json")
    done = subprocess.run([sys.executable, "-m", "crds.bestrefs", "--files", *files, "--new-context",
                           hst_bucket.sample.contexts[-1], "--update-pickle", "--save-pickle", out],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "0 errors" in done.stderr, done.stderr[-2000:]
    assert "Loaded pickled context" in done.stderr
    with open(out) as handle:
        picked = {value.lower() for line in handle for header in json.loads(line).values()
                  for key, value in header.items() if key.endswith("FILE") and "NOT FOUND" not in value}
    assert picked == references_in(hst_bucket.cache)


def test_the_rules_compiled_expressions_survive_the_pickle(hst_bucket, tmp_path):
    """An rmap's relevance is an expression crds compiles on load; a pickle drops it and crds compiles it
    again: a raw file that omits its dark (DARKCORR = 'OMIT') gets no dark, as from the mappings."""
    header = dict(context.HST_DATASET_HEADERS["ACS"], DARKCORR="OMIT")
    dataset = sample_datasets.write_fits(str(tmp_path / "nodark_raw.fits"), header)
    run = hst_bucket.run("hst", "ops", "--datasets", dataset)
    assert run.returncode == 0, run.stderr
    choice = run.event("best references")
    assert "darkfile" in choice["not_applicable"] and "darkfile" not in choice["references"]
    expected = hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]]["acs"]
    assert references_in(hst_bucket.cache) == {name for kind, name in expected.items() if kind != "darkfile"}


def test_an_association_stands_for_its_exposures_with_a_pickled_context(hst_bucket, tmp_path):
    table, raws = hst_association(str(tmp_path))
    run = hst_bucket.run("hst", "ops", "--", "true", table)
    assert run.returncode == 0, run.stderr
    chosen = {line["dataset"]: line["references"] for line in run.events("best references")}
    assert sorted(chosen) == raws and {line["association"] for line in run.events("best references")} == {table}
    assert chosen[raws[0]] != chosen[raws[1]], "the exposures' dates differ: so do their references"
    assert references_in(hst_bucket.cache) == {name for refs in chosen.values() for name in refs.values()}


@pytest.mark.parametrize("layout, pinned", [("flat", False), ("instrument", True)])
def test_the_hst_recipe_runs_offline_on_a_pickled_cache(hst_bucket, hst_datasets, tmp_path, layout, pinned):
    """The README's recipe, with every socket of its Python processes refused: crds bestrefs writes the best
    references into the raw file (from the cached pickle), and the calibration opens them through jref$."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    dataset = hst_datasets["ACS"]
    context_name = hst_bucket.sample.contexts[0 if pinned else -1]
    script = (f'export PYTHONPATH="{guard}"; '
              f'"{sys.executable}" -m crds.bestrefs --new-context "$CRDS_CONTEXT" --files "$1" --update-bestrefs && '
              f'exec "{sys.executable}" -c "$2" "$1"')
    run = hst_bucket.run("hst", "ops", "--ref-subdir-mode", layout, *(["--context", context_name] if pinned else []),
                         "--", "sh", "-c", script, "sh", dataset, HST_CALIBRATION)
    assert run.returncode == 0, run.stderr
    assert "Loaded pickled context" in run.stderr and "crds tried the network" not in run.stderr
    found = json.loads(run.stdout.splitlines()[-1])
    assert {key.lower(): os.path.basename(path) for key, path in found.items()} == \
        hst_bucket.sample.expected[context_name]["acs"]
    assert run.event("warming the references of datasets")["source"] == "command"


def test_the_guard_is_real(hst_bucket, tmp_path):
    """The same guard refuses a Python process of the command that reaches for the network."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    script = (f'export PYTHONPATH="{guard}"; exec "{sys.executable}" -c '
              '"import urllib.request; urllib.request.urlopen(\'http://127.0.0.1:9\')"')
    run = hst_bucket.run("hst", "ops", "--mappings-only", "--", "sh", "-c", script)
    assert run.returncode != 0 and "crds tried the network" in run.stderr


def test_a_pinned_context_absent_from_the_bucket_lists_the_pickled_ones(hst_bucket):
    run = hst_bucket.run("hst", "ops", "--source", "s3", "--context", "hst_0042.pmap")
    assert run.returncode == ExitCode.USAGE
    message = only_error(run)
    assert "hst_0042.pmap is not in" in message and "pickles/hst" in message
    assert "contexts there: as pickles only: hst_0050.pmap, hst_0051.pmap" in message
    assert not cache_files(hst_bucket.cache)


def test_a_pinned_context_s3_will_not_show_is_still_a_usage_error(s3, hst_bucket):
    """A role that may not list the pickles gets 403, not 404, for one that is not there: a typo stays 64."""
    with FaultProxy(s3.endpoint) as proxy:
        proxy.rules.append(Rule("403", path="pickles/hst/hst_0042", method="HEAD"))
        run = hst_bucket.run("hst", "ops", "--source", "s3", "--context", "hst_0042.pmap",
                             AWS_ENDPOINT_URL_S3=proxy.endpoint)
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert "hst_0042.pmap is not in" in only_error(run) and "S3 refused the job a look" in only_error(run)


def test_mappings_s3_refuses_to_show_are_no_mappings(s3, hst_bucket):
    """HST's layout read by a role without mappings/: the pmap's 403 sends the warm to the pickle."""
    with FaultProxy(s3.endpoint) as proxy:
        proxy.rules += [Rule("403", path="/mappings/", method=method) for method in ("HEAD", "GET")]
        run = hst_bucket.run("hst", "ops", AWS_ENDPOINT_URL_S3=proxy.endpoint)
    assert run.returncode == 0, run.stderr
    assert run.event("plan")["rules"] == "pickle"
    assert_cache_verified(hst_bucket.cache, hst_bucket.sample)


def test_no_pickles_refuses_a_pickle_only_bucket_and_its_twin_too(hst_bucket):
    for run in (hst_bucket.run("hst", "ops", "--no-pickles"), hst_bucket.run("hst", "ops", CRDS_JOB_PICKLES="0")):
        assert run.returncode == ExitCode.USAGE
        message = only_error(run)
        assert "as a pickle" in message and "--no-pickles" in message and "a pickle is code" in message
        assert not pickles_in(hst_bucket.cache) and not references_in(hst_bucket.cache)


def test_a_bucket_with_both_is_warmed_from_its_mappings(s3, tmp_path, hst_sample):
    bucket = pickled_bucket(s3, tmp_path, hst_sample, mappings=True)
    report = json.loads(bucket.run("hst", "ops", "--dry-run").stdout)
    assert report["rules"] == "mappings" and report["totals"]["pickles"] == 0
    run = bucket.run("hst", "ops", "--no-pickles")  # no pickle is needed: none is refused
    assert run.returncode == 0, run.stderr
    assert run.event("plan")["rules"] == "mappings" and not pickles_in(bucket.cache)
    assert len([p for p in cache_files(bucket.cache) if p.startswith("mappings")]) == 10
    assert references_in(bucket.cache) == bucket.sample.references_of[bucket.sample.contexts[-1]]


def test_a_corrupt_reference_never_reaches_the_cache(hst_bucket):
    latest = hst_bucket.sample.contexts[-1]
    name = max(hst_bucket.sample.expected[latest]["acs"].values(), key=hst_bucket.sample.reference_sizes.get)
    data = hst_bucket.sample.reference_bytes(name)
    hst_bucket.put(f"references/hst/{name}", data[:10] + bytes([data[10] ^ 1]) + data[11:])
    run = hst_bucket.run("hst", "ops", "--retries", "2")
    assert run.returncode == ExitCode.BUCKET_CONTENT, run.stderr
    assert name in only_error(run) and "arrived with sha1" in only_error(run)
    assert name not in references_in(hst_bucket.cache)
    assert_cache_verified(hst_bucket.cache, hst_bucket.sample)


#: A pickle whose loading ends the process that loads it, as a crash of crds's C code would.
class _Fatal:
    def __reduce__(self):
        return eval, ("__import__('os')._exit(3)",)


def test_a_pickle_that_kills_crds_is_the_pickles_fault_and_not_kept(hst_bucket):
    name = f"{hst_bucket.sample.contexts[-1]}.pkl"
    hst_bucket.put(f"pickles/hst/{name}", pickle.dumps(_Fatal()))
    run = hst_bucket.run("hst", "ops")
    assert run.returncode == ExitCode.BUCKET_CONTENT, run.stderr
    assert f"crds died with exit 3 loading the pickle {name}" in only_error(run)
    assert "--all-references" not in only_error(run), "a whole-context warm: no dataset to leave out"
    assert not pickles_in(hst_bucket.cache) and not references_in(hst_bucket.cache)


@pytest.mark.parametrize("damage", ["truncated", "not a pickle"])
def test_a_broken_pickle_is_named_and_not_kept(hst_bucket, damage):
    """download_metadata does not list it: its size and S3's checksum pass, crds cannot load it (65)."""
    latest = hst_bucket.sample.contexts[-1]
    name = f"{latest}.pkl"
    good = hst_bucket.sample.pickles[name]
    hst_bucket.put(f"pickles/hst/{name}", good[: len(good) // 2] if damage == "truncated" else b"x" * len(good))
    run = hst_bucket.run("hst", "ops")
    assert run.returncode == ExitCode.BUCKET_CONTENT, run.stderr
    message = only_error(run)
    assert f"crds cannot load context {latest} from its pickle {name}" in message
    assert "Error" in message.split(name, 1)[1], "crds's own reason follows"
    assert not pickles_in(hst_bucket.cache) and not references_in(hst_bucket.cache)
    assert not [p for p in cache_files(hst_bucket.cache) if os.path.basename(p).startswith(".")]


def test_a_pickle_of_another_context_under_this_ones_name_is_refused(hst_bucket):
    older, latest = hst_bucket.sample.contexts
    hst_bucket.put(f"pickles/hst/{latest}.pkl", hst_bucket.sample.pickles[f"{older}.pkl"])
    run = hst_bucket.run("hst", "ops")
    assert run.returncode == ExitCode.BUCKET_CONTENT, run.stderr
    assert f"it holds PipelineContext '{older}', not the context {latest}" in only_error(run)
    assert not pickles_in(hst_bucket.cache) and not references_in(hst_bucket.cache)


def test_a_pickle_whose_published_sha1_fails_never_reaches_the_cache(s3, tmp_path, hst_sample):
    bucket = pickled_bucket(s3, tmp_path, hst_sample, listed=True)
    name = f"{bucket.sample.contexts[-1]}.pkl"
    good = bucket.sample.pickles[name]
    bucket.put(f"pickles/hst/{name}", good[:100] + bytes([good[100] ^ 1]) + good[101:])
    run = bucket.run("hst", "ops", "--retries", "2")
    assert run.returncode == ExitCode.BUCKET_CONTENT, run.stderr
    assert name in only_error(run) and "arrived with sha1" in only_error(run)
    assert not pickles_in(bucket.cache) and not references_in(bucket.cache)


def test_a_published_sha1_is_what_a_pickle_is_checked_by(s3, tmp_path, hst_sample):
    bucket = pickled_bucket(s3, tmp_path, hst_sample, listed=True)
    run = bucket.run("hst", "ops")
    assert run.returncode == 0, run.stderr
    assert run.event("the bucket holds the context as a pickle, without mappings: crds will load it, in a child "
                     "process")["check"] == "sha1"
    assert not run.events("the bucket publishes no sha1 for some files: they are checked by size (and by the "
                          "checksum S3 keeps, if any, when fetched in one GET)")
    assert_cache_verified(bucket.cache, bucket.sample)
    # A cached pickle is checked again by its sha1, whatever --verify-existing says: it is code.
    path = os.path.join(bucket.cache, "pickles", "hst", f"{bucket.sample.contexts[-1]}.pkl")
    with open(path, "r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 1]))
    again = bucket.run("hst", "ops")
    assert again.returncode == 0, again.stderr
    assert again.event("cached file is corrupt, fetching it again")["file"] == os.path.basename(path)
    assert_cache_verified(bucket.cache, bucket.sample)


#: A pickle that records, when loaded, the process that loaded it, then gives the real context.
class _Marked:
    def __init__(self, real: bytes, marker: str) -> None:
        self.real, self.marker = real, marker

    def __reduce__(self):
        code = (f"(open({self.marker!r}, 'a').write(str(__import__('os').getpid()) + '\\n'), "
                f"__import__('pickle').loads({self.real!r}))[1]")
        return eval, (code,)


def test_crds_jobs_own_process_never_loads_a_pickle(hst_bucket, tmp_path):
    """Loading a pickle runs its code: here, code that writes down the PID that ran it."""
    marker = tmp_path / "loaded-by"
    name = f"{hst_bucket.sample.contexts[-1]}.pkl"
    hst_bucket.put(f"pickles/hst/{name}", pickle.dumps(_Marked(hst_bucket.sample.pickles[name], str(marker))))
    job = subprocess.Popen([sys.executable, "-m", "crds_job", "hst", "ops"], env=hst_bucket.env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr
    loaders = marker.read_text().split()
    assert loaders, "the pickle was loaded (by crds, to list the context's references)"
    assert str(job.pid) not in loaders
    logs, _ = parse_logs(stderr)
    assert any(line["event"] == "warmed" for line in logs)
