"""What a pipeline asks crds for beyond its dataset's header, warmed ahead, and checked with the real crds.

Three ways a calibration asks for references that its input's header alone does
not decide: a type whose rmap matches on keys no exposure carries (romancal's
``dustmap`` by ``ROMAN.FIELD``), which is warmed for every reference the rmap can
still select; a Roman association (``*_asn.json``), which stands for its members;
and a command that builds its header itself (a simulator), described with
``--header`` and ``--reftypes``. Each is followed by the real crds, offline with
every socket refused, asking as the pipeline does.
"""

from __future__ import annotations

import ast
import json
import os
import sys

import pytest
from conftest import cache_files, new_bucket
from test_crds_acceptance import NO_NETWORK

from crds_job import datasets, settings
from crds_job.errors import ExitCode, UsageError
from crds_job.sample import context
from crds_job.sample import datasets as sample_datasets
from crds_job.sample.context import render_mapping

pytest.importorskip("crds", reason="choosing best references needs the crds client (the crds extra)")

DETECTOR = "ROMAN.META.INSTRUMENT.DETECTOR"
FIELD = "ROMAN.FIELD"
START = "ROMAN.META.EXPOSURE.START_TIME"

#: The real rmap's header (crds/roman/specs/wfi_dustmap.rmap): one Match on a key no exposure has.
DUSTMAP = ("dustmap", (("ROMAN.FIELD",),), ("Match",),
           "Match({\n    ('NORTH',) : 'roman_wfi_dustmap_0001.fits',\n"
           "    ('SOUTH',) : 'roman_wfi_dustmap_0002.fits',\n})")
#: A type matched on the detector (which exposures carry) and the field (which they do not), by date:
#: the header's detector and date still decide among its rows.
EPSF = ("epsf", ((DETECTOR, FIELD), (START,)), ("Match", "UseAfter"),
        "Match({\n"
        "    ('WFI01', 'NORTH') : UseAfter({'2002-03-01 00:00:00' : 'roman_wfi_epsf_0001.asdf',\n"
        "                                   '2019-01-01 00:00:00' : 'roman_wfi_epsf_0002.asdf'}),\n"
        "    ('WFI01', 'SOUTH') : UseAfter({'2019-01-01 00:00:00' : 'roman_wfi_epsf_0003.asdf'}),\n"
        "    ('WFI02', 'NORTH') : UseAfter({'2019-01-01 00:00:00' : 'roman_wfi_epsf_0004.asdf'}),\n"
        "})")
#: What the exposure's field could still select: both maps; WFI01's newest epsf of each field.
CANDIDATES = {"dustmap": ["roman_wfi_dustmap_0001.fits", "roman_wfi_dustmap_0002.fits"],
              "epsf": ["roman_wfi_epsf_0002.asdf", "roman_wfi_epsf_0003.asdf"]}
SIZES = {"roman_wfi_dustmap_0001.fits": 300_000, "roman_wfi_dustmap_0002.fits": 200_000,
         "roman_wfi_epsf_0001.asdf": 1_000, "roman_wfi_epsf_0002.asdf": 2_000,
         "roman_wfi_epsf_0003.asdf": 3_000, "roman_wfi_epsf_0004.asdf": 4_000}


def with_rmaps(sample: context.SampleBucket, *rules: tuple[str, tuple, tuple, str],
               sizes: dict[str, int] = SIZES) -> context.SampleBucket:
    """``sample`` with one more rmap per rule, named by every context's WFI imap, as a delivery adds a type."""
    for kind, parkey, classes, selector in rules:
        name = f"roman_wfi_{kind}_0001.rmap"
        header = {"mapping": "REFERENCE", "observatory": "ROMAN", "instrument": "WFI", "filekind": kind.upper(),
                  "name": name, "derived_from": "crds-job test", "parkey": parkey, "classes": classes}
        sample.mappings[name] = render_mapping(header, selector).encode()
    sample.reference_sizes.update(sizes)
    for imap in [name for name in sample.mappings if name.endswith(".imap")]:
        head, _, body = sample.mappings[imap].decode().partition("\n\nselector = ")
        rows = {**ast.literal_eval(body), **{kind.upper(): f"roman_wfi_{kind}_0001.rmap" for kind, *_ in rules}}
        text = "{\n" + "".join(f"    {kind!r} : {rmap!r},\n" for kind, rmap in sorted(rows.items())) + "}"
        sample.mappings[imap] = render_mapping(ast.literal_eval(head.removeprefix("header = ")), text).encode()
    return sample


@pytest.fixture
def bucket(s3, tmp_path):
    return new_bucket(s3, with_rmaps(context.roman(detectors=2), DUSTMAP, EPSF), str(tmp_path / "cache"))


def references_in(cache: str) -> set[str]:
    return {os.path.basename(path) for path in cache_files(cache) if path.startswith("references")}


def ask_as_the_pipeline(requests: list[tuple[dict, list[str] | None]]) -> str:
    """A command whose crds asks, offline and with no socket, for each (header, types) as a pipeline
    does (``crds.getreferences``), and prints what it got: each file must be in the cache."""
    return NO_NETWORK + f"""
import json, os, crds
found = []
for header, types in {requests!r}:
    refs = crds.getreferences(header, reftypes=types, observatory="roman")
    assert all(os.path.isfile(path) for path in refs.values()), refs
    found.append({{kind: os.path.basename(path) for kind, path in refs.items()}})
print(json.dumps(found))
"""


def exposure(folder, detector: str = "WFI01") -> str:
    header = dict(context.ROMAN_DATASET_HEADER, **{DETECTOR: detector})
    return sample_datasets.write_asdf(os.path.join(folder, f"r0000101001001001001_0001_{detector.lower()}_uncal.asdf"),
                                      header)


# ----- the pure parts ----------------------------------------------------------------------------


def test_header_and_reftypes_options_and_their_env_twins():
    given = settings.parse(["--header", "roman.meta.instrument.detector=WFI02, ROMAN.META.EXPOSURE.START_TIME="
                            "2025-01-01 00:00:00", "--reftypes", "Dark,flat", "roman", "ops"], environ={})
    assert given.header == ((DETECTOR, "WFI02"), (START, "2025-01-01 00:00:00"))
    assert given.reftypes == ("dark", "flat")
    twins = settings.parse(["roman", "ops"], environ={"CRDS_JOB_HEADER": "roman.field=north",
                                                      "CRDS_JOB_REFTYPES": "dustmap"})
    assert (twins.header, twins.reftypes) == (((FIELD, "north"),), ("dustmap",))
    with pytest.raises(UsageError, match="KEY=VALUE"):
        settings.parse(["--header", "roman.field", "roman", "ops"], environ={})
    with pytest.raises(UsageError, match="--reftypes cannot be combined with --all-references"):
        settings.parse(["--reftypes", "dark", "--all-references", "roman", "ops"], environ={})


def test_a_header_turns_the_search_of_the_command_off_and_reftypes_alone_is_an_empty_header():
    command = ["romanisim-make-image", "in.asdf"]
    always = lambda _path: True  # noqa: E731
    simulated = datasets.select((), command, False, always, header=((DETECTOR, "WFI02"),), reftypes=("dark",))
    assert (simulated.datasets, simulated.source) == ((), "--header")
    assert simulated.headers == [("--header ROMAN.META.INSTRUMENT.DETECTOR=WFI02", {DETECTOR: "WFI02"})]
    found = datasets.select((), command, False, always, reftypes=("dark",))
    assert (found.datasets, found.reftypes, found.headers) == (("in.asdf",), ("dark",), [])  # its types narrowed
    alone = datasets.select((), ["romanisim-make-image"], False, always, reftypes=("dustmap",))
    assert alone.selective and alone.headers == [("--reftypes dustmap", {})]


def test_a_roman_association_is_found_in_the_command():
    found = datasets.select((), ["strun", "romancal.pipeline.ExposurePipeline", "r0000101_asn.json",
                                 "config.json"], False, lambda _path: True)
    assert found.datasets == ("r0000101_asn.json",)


# ----- a type the header cannot decide -----------------------------------------------------------


def test_every_candidate_of_a_type_whose_keys_the_exposure_lacks_is_warmed(bucket, tmp_path):
    """romancal's source catalog asks for ``dustmap`` by a field of its own: both maps must be there,
    and of a type the exposure's detector and date still restrict, only what they allow."""
    path = exposure(tmp_path)
    expected = bucket.sample.expected[bucket.sample.contexts[-1]]["wfi"]
    ask = ask_as_the_pipeline([(dict(context.ROMAN_DATASET_HEADER), sorted(expected)),  # as stpipe: by type
                               ({"roman.meta.instrument.name": "wfi", "roman.field": "north"}, ["dustmap"]),
                               ({"roman.meta.instrument.name": "wfi", "roman.field": "south"}, ["dustmap"]),
                               (dict(context.ROMAN_DATASET_HEADER, **{FIELD: "SOUTH"}), ["epsf"])])
    run = bucket.run("roman", "ops", "--", sys.executable, "-c", ask, path)
    assert run.returncode == 0, run.stderr
    assert references_in(bucket.cache) == set(expected.values()) | {n for f in CANDIDATES.values() for n in f}
    for kind, files in CANDIDATES.items():
        said = run.event(f"warming every candidate of {kind}: its match keys are not in the dataset")
        assert said["files"] == files and FIELD in said["absent"] and said["datasets"] == [path]
        assert said["bytes"] == sum(SIZES[name] for name in files)
    chosen = run.event("best references")
    assert chosen["references"] == expected and "dustmap" not in chosen.get("unmatched", {})
    got = json.loads(run.stdout)  # the real crds, offline: the exposure's own, each field's map, the epsf
    assert got[0] == expected
    assert got[1:] == [{"dustmap": "roman_wfi_dustmap_0001.fits"}, {"dustmap": "roman_wfi_dustmap_0002.fits"},
                       {"epsf": "roman_wfi_epsf_0003.asdf"}]


def test_dry_run_shows_the_candidates_and_their_bytes(bucket, tmp_path):
    run = bucket.run("roman", "ops", "--dry-run", "--datasets", exposure(tmp_path))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    (dataset,) = report["datasets"]
    assert {kind: found["files"] for kind, found in dataset["candidates"].items()} == CANDIDATES
    assert report["candidates"] == {"files": 4, "bytes": sum(SIZES[n] for f in CANDIDATES.values() for n in f),
                                    "types": ["dustmap", "epsf"]}
    assert not os.path.exists(bucket.cache)


def test_a_type_whose_keys_the_header_has_and_match_nothing_stays_unmatched(bucket, tmp_path):
    """A field the rmap has no row for is no lack of keys: nothing is meant to match, nothing is warmed."""
    header = dict(context.ROMAN_DATASET_HEADER, **{FIELD: "EAST"})
    path = sample_datasets.write_asdf(str(tmp_path / "east_uncal.asdf"), header)
    run = bucket.run("roman", "ops", "--datasets", path)
    assert run.returncode == 0, run.stderr
    unmatched = run.event("no reference matched some types of a dataset; the calibration decides whether that "
                          "is fatal")["unmatched"]
    assert set(unmatched) == {"dustmap", "epsf"}
    assert not run.events("warming every candidate of dustmap: its match keys are not in the dataset")
    assert not references_in(bucket.cache) & set(SIZES)


# ----- associations ------------------------------------------------------------------------------


def association(folder, members: list[str]) -> str:
    """A Roman association as romancal's tools write it: products and their members' ``expname``, relative."""
    path = os.path.join(folder, "r0000101001001001001_image_asn.json")
    document = {"asn_type": "image", "asn_rule": "candidate_Asn_Lv2Image", "asn_id": "a3001",
                "program": "00001", "asn_pool": "pool", "version_id": None, "code_version": "0.0",
                "products": [{"name": "r0000101001001001001_0001_wfi", "members": [
                    {"expname": name, "exptype": "science"} for name in members]}]}
    with open(path, "w") as handle:
        json.dump(document, handle)
    return path


@pytest.mark.parametrize("how", ["command", "--datasets"])
def test_a_roman_association_warms_what_each_member_needs(bucket, tmp_path, how):
    members = [os.path.basename(exposure(tmp_path, detector)) for detector in ("WFI01", "WFI02")]
    asn = association(tmp_path, members)
    kinds = sorted(bucket.sample.expected[bucket.sample.contexts[-1]]["wfi"])
    headers = [(dict(context.ROMAN_DATASET_HEADER, **{DETECTOR: detector}), kinds) for detector in ("WFI01", "WFI02")]
    command = [sys.executable, "-c", ask_as_the_pipeline(headers), asn]
    run = bucket.run("roman", "ops", *(["--datasets", asn] if how == "--datasets" else []), "--", *command)
    assert run.returncode == 0, run.stderr
    chosen = run.events("best references")
    assert [line["dataset"] for line in chosen] == [str(tmp_path / name) for name in members]
    assert all(line["association"] == asn for line in chosen)
    got = json.loads(run.stdout)  # the real crds found each member's references in the cache, offline
    assert got[0] != got[1] and got[0] == bucket.sample.expected[bucket.sample.contexts[-1]]["wfi"]
    assert references_in(bucket.cache) == set(got[0].values()) | set(got[1].values()) | {
        n for f in CANDIDATES.values() for n in f} | {"roman_wfi_epsf_0004.asdf"}  # WFI02's epsf


def test_an_association_member_that_is_not_there_is_a_dataset_error(bucket, tmp_path):
    asn = association(tmp_path, [os.path.basename(exposure(tmp_path)), "r0000101001001001001_0002_wfi01_uncal.asdf"])
    run = bucket.run("roman", "ops", "--datasets", asn)
    assert run.returncode == ExitCode.DATASET, run.stderr
    assert "r0000101001001001001_0002_wfi01_uncal.asdf" in run.errors[0]["event"]
    assert not references_in(bucket.cache)


def test_an_association_that_is_not_one_is_a_dataset_error(bucket, tmp_path):
    asn = tmp_path / "broken_asn.json"
    asn.write_text('{"products": "none"}')
    run = bucket.run("roman", "ops", "--datasets", str(asn))
    assert run.returncode == ExitCode.DATASET, run.stderr
    assert "cannot be read as an association" in run.errors[0]["event"]


# ----- a header the command builds ---------------------------------------------------------------


def test_a_simulator_warms_what_its_own_header_asks_for(bucket):
    """romanisim builds its header (a detector, a date) and asks crds for the types it uses."""
    header = {"ROMAN.META.INSTRUMENT.NAME": "WFI", DETECTOR: "WFI02", START: "2025-01-01 00:00:00",
              "ROMAN.META.EXPOSURE.TYPE": "WFI_IMAGE", "ROMAN.META.INSTRUMENT.OPTICAL_ELEMENT": "F158"}
    command = [sys.executable, "-c", ask_as_the_pipeline([(header, ["dark", "flat", "gain"])])]
    run = bucket.run("roman", "ops", "--header", f"{DETECTOR}=WFI02,{START}=2025-01-01 00:00:00,"
                     "ROMAN.META.EXPOSURE.TYPE=WFI_IMAGE,ROMAN.META.INSTRUMENT.OPTICAL_ELEMENT=F158",
                     "--reftypes", "dark,flat,gain", "--", *command)
    assert run.returncode == 0, run.stderr
    (got,) = json.loads(run.stdout)
    assert references_in(bucket.cache) == set(got.values()) and len(got) == 3  # those three, nothing else
    assert run.event("best references")["dataset"].startswith("--header ")


def test_reftypes_alone_warms_every_reference_of_those_types(bucket):
    """With no header at all, every reference the rules hold for those types (the instrument is Roman's only)."""
    ask = ask_as_the_pipeline([({"roman.meta.instrument.name": "wfi", "roman.field": field}, ["dustmap"])
                               for field in ("north", "south")])
    run = bucket.run("roman", "ops", "--", sys.executable, "-c", ask, env=bucket.env(CRDS_JOB_REFTYPES="dustmap"))
    assert run.returncode == 0, run.stderr
    assert references_in(bucket.cache) == set(CANDIDATES["dustmap"])
    assert [list(found.values()) for found in json.loads(run.stdout)] == [[n] for n in CANDIDATES["dustmap"]]


def test_a_type_the_context_has_no_rules_for_is_a_usage_error(bucket):
    run = bucket.run("roman", "ops", "--reftypes", "dustmap,skycells")
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert "--reftypes names skycells, which instrument wfi of context roman_0051.pmap has no rules for" in \
        run.errors[0]["event"]
    assert not os.path.exists(os.path.join(bucket.cache, "references"))


def test_a_type_crds_cannot_match_for_another_reason_than_a_lacking_key_stays_unmatched(s3, tmp_path):
    """The exposure's date is before every use-after of its detector's rows: the field it lacks is not
    why crds finds nothing, so no apcorr is warmed; the dust maps, which only the field decides, still are."""
    late = ("apcorr", ((DETECTOR, FIELD), (START,)), ("Match", "UseAfter"),
            "Match({\n    ('WFI01', 'NORTH') : UseAfter({'2030-01-01 00:00:00' : 'roman_wfi_apcorr_0001.asdf'}),\n"
            "    ('WFI01', 'N/A') : UseAfter({'2030-01-01 00:00:00' : 'roman_wfi_apcorr_0002.asdf'}),\n})")
    sizes = {**SIZES, "roman_wfi_apcorr_0001.asdf": 10, "roman_wfi_apcorr_0002.asdf": 20}
    bucket = new_bucket(s3, with_rmaps(context.roman(detectors=2), DUSTMAP, late, sizes=sizes),
                        str(tmp_path / "cache"))
    run = bucket.run("roman", "ops", "--datasets", exposure(tmp_path))
    assert run.returncode == 0, run.stderr
    assert run.events("warming every candidate of dustmap: its match keys are not in the dataset")
    assert not run.events("warming every candidate of apcorr: its match keys are not in the dataset")
    assert "apcorr" in run.event("no reference matched some types of a dataset; the calibration decides whether "
                                 "that is fatal")["unmatched"]
    assert not {name for name in references_in(bucket.cache) if "_apcorr_" in name}


def test_a_header_of_an_instrument_the_context_lacks_is_a_usage_error(bucket):
    run = bucket.run("roman", "ops", "--header", "ROMAN.META.INSTRUMENT.NAME=WFC3")
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert "instrument wfc3 is not in context roman_0051.pmap" in run.errors[0]["event"]


def test_reftypes_with_no_dataset_among_the_guesses_warms_those_types(bucket, tmp_path):
    """The command names an output to be: --reftypes then stands alone, not for the whole context."""
    run = bucket.run("roman", "ops", "--reftypes", "dustmap", "--", "true", str(tmp_path / "out_uncal.asdf"))
    assert run.returncode == 0, run.stderr
    assert references_in(bucket.cache) == set(CANDIDATES["dustmap"])
