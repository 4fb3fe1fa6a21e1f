"""Selective warm: only the references the input datasets need, as the real crds chooses them.

End to end against the S3 server on loopback: HST FITS datasets of two
instruments and a Roman ASDF dataset, written by the tests with real header
keywords; the references fetched are compared with what ``crds bestrefs``
itself picks for the same files and context, offline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator

import pytest
from conftest import (
    READ_ONLY_MOUNTS,
    assert_cache_verified,
    cache_files,
    new_bucket,
    publish_rmap,
    run_read_only,
    snapshot,
)
from faults import FaultProxy, Rule

from crds_job import datasets, environments, launch, plan, settings
from crds_job.errors import BucketContentError, DatasetError, ExitCode, S3AccessError, UsageError
from crds_job.sample import context
from crds_job.sample import datasets as sample_datasets

pytest.importorskip("crds", reason="choosing best references needs the crds client (the crds extra)")


# ----- the pure parts ----------------------------------------------------------------------------


def test_datasets_are_found_among_the_command_arguments():
    exists = {"l1_img.asdf", "/data/j8bt06o6q_raw.fits"}.__contains__
    found = datasets.select((), ["strun", "romancal.pipeline.ExposurePipeline", "l1_img.asdf",
                                 "--output_file=out.asdf", "out_cal.asdf", "s3://bucket/x_raw.fits",
                                 "/data/j8bt06o6q_raw.fits", "l1_img.asdf"], whole_context=False, exists=exists)
    assert found.datasets == ("l1_img.asdf", "s3://bucket/x_raw.fits", "/data/j8bt06o6q_raw.fits")
    assert found.source == "command"
    assert found.not_found == ("out_cal.asdf",)  # an output to be: not an input


def test_the_program_itself_and_whole_context_modes_are_never_datasets():
    always = lambda _path: True  # noqa: E731
    assert not datasets.select((), ["calwf3.e"], False, always).selective
    assert not datasets.select((), ["./x.fits"], False, always).selective  # the program, not an argument
    assert not datasets.select((), ["calwf3.e", "a_raw.fits"], True, always).selective
    assert not datasets.select((), ["strun", "x.asdf"], False, lambda _path: False).selective


def test_a_shell_scripts_words_are_looked_into_with_its_variables_expanded():
    exists = {"/data/exposure-7.asdf", "/data/exposure-3_raw.fits"}.__contains__
    environ = {"AWS_BATCH_JOB_ARRAY_INDEX": "7", "N": "3"}
    script = "exec strun romancal.pipeline.ExposurePipeline /data/exposure-$AWS_BATCH_JOB_ARRAY_INDEX.asdf"
    found = datasets.select((), ["sh", "-c", script], False, exists, environ)
    assert (found.datasets, found.source) == (("/data/exposure-7.asdf",), "command")
    braced = datasets.select((), ["/bin/bash", "-c", "calwf3.e '/data/exposure-${N}_raw.fits' # x.asdf"],
                             False, exists, environ)
    assert braced.datasets == ("/data/exposure-3_raw.fits",)  # quotes removed, the comment ignored
    unset = datasets.select((), ["sh", "-c", "strun p /data/exposure-$UNSET.asdf"], False, exists, environ)
    assert not unset.selective and unset.not_found == ("/data/exposure-$UNSET.asdf",)
    assert not datasets.select((), ["sh", "-c", "strun p '/data/exposure-7.asdf"], False, exists, environ).selective
    # Not a shell's script: the words as they are.
    assert datasets.arguments(["python", "-c", "/data/exposure-7.asdf"], environ) == ["-c", "/data/exposure-7.asdf"]


def test_a_shell_scripts_positional_parameters_and_globs_are_expanded_as_the_shell_will():
    """``sh -c 'calacs.e "$1"' sh FILE``, the usual way to hand ``sh -c`` a file, and a glob of raw files."""
    exists = {"/data/a_raw.fits", "/data/b_raw.fits", "/data/c_raw.fits"}.__contains__
    script = 'crds bestrefs --files "$1" && exec calacs.e "$1" ${2}'
    found = datasets.select((), ["sh", "-c", script, "sh", "/data/a_raw.fits", "/data/b_raw.fits"], False, exists, {})
    assert found.datasets == ("/data/a_raw.fits", "/data/b_raw.fits")
    assert datasets.arguments(["sh", "-c", "x $10 \"$@\" $*", "sh", "1", "2 3"], {}) == \
        ["x", "10", "1", "2 3", "1", "2 3"]  # $10 is ${1}0; each argument stays one word
    matches = {"/data/*_raw.fits": ["/data/c_raw.fits", "/data/a_raw.fits"]}
    words = datasets.arguments(["sh", "-c", "calwf3.e /data/*_raw.fits /none/*.fits s3://b/*.fits"], {},
                               lambda pattern: matches.get(pattern, []))
    assert words == ["calwf3.e", "/data/a_raw.fits", "/data/c_raw.fits", "/none/*.fits", "s3://b/*.fits"]
    cd = datasets.select((), ["sh", "-c", "cd /data && cd sub && exec calacs.e a_raw.fits /x/b_raw.fits s3://b/c.fits"],
                         False, {"/data/sub/a_raw.fits", "/x/b_raw.fits"}.__contains__, {})
    assert cd.datasets == ("/data/sub/a_raw.fits", "/x/b_raw.fits", "s3://b/c.fits")  # where the shell opens them


def test_named_datasets_are_strict_and_guesses_are_not():
    named = datasets.select(("a.fits", "s3://b/c.fits"), [], False, lambda _path: False)
    assert named.strict and named.local_missing(lambda _path: False) == ["a.fits"]  # URLs: checked when read
    guessed = datasets.select((), ["calwf3.e", "a_raw.fits"], False, lambda _path: True)
    assert not guessed.strict and guessed.local_missing(lambda _path: False) == []


@pytest.mark.parametrize("name, given", [("x_raw.fits.gz", "x_raw.fits"), ("x.fit", "x.fits"),
                                         ("x_raw.FITS.FZ", "x_raw.fits"), ("l1.asdf", "l1.asdf")])
def test_crds_is_given_a_name_whose_format_it_knows(name, given):
    assert datasets.crds_name(name) == given


def test_datasets_option_and_its_env_twin():
    parsed = settings.parse(["hst", "ops", "--datasets", "a_raw.fits,s3://b/C_raw.fits"], {})
    assert parsed.datasets == ("a_raw.fits", "s3://b/C_raw.fits")  # case kept: these are paths
    parsed = settings.parse(["hst", "ops"], {"CRDS_JOB_DATASETS": "x.fits\ny.fits"})
    assert parsed.datasets == ("x.fits", "y.fits")
    assert settings.parse(["hst", "ops", "--all-references"], {}).all_references


@pytest.mark.parametrize("clash", [["--all-references"], ["--mappings-only"], ["--instruments", "acs"]])
def test_datasets_cannot_be_combined_with_whole_context_options(clash):
    with pytest.raises(UsageError, match="--datasets cannot be combined"):
        settings.parse(["hst", "ops", "--datasets", "a.fits", *clash], {})


def test_narrow_keeps_the_chosen_references_and_their_geis_partners():
    meta = context.hst().metadata()
    from crds_job.server_config import FileInfo

    info = {name: FileInfo(int(v["size"]), v["sha1sum"]) for name, v in meta.items()}
    references = tuple(plan.entry(n, "reference", info, "test") for n in sorted(info) if not n.endswith("map"))
    full = plan.Plan("hst_0051.pmap", ("acs",), (), references)
    geis = next(e.name for e in references if e.name.endswith(".r4h"))
    narrowed = plan.narrow(full, [geis, references[0].name])
    assert {e.name for e in narrowed.references} == {geis, geis[:-1] + "d", references[0].name}
    with pytest.raises(BucketContentError, match="which hst_0051.pmap does not name"):
        plan.narrow(full, ["zzzzzzzzz_bia.fits"])


# ----- end to end --------------------------------------------------------------------------------


@pytest.fixture
def hst_bucket(s3, tmp_path):
    return new_bucket(s3, context.hst(), str(tmp_path / "cache"), prefix="")


def references_in(cache: str) -> set[str]:
    return {os.path.basename(p) for p in cache_files(cache) if p.startswith("references")}


def crds_bestrefs(bucket, files: list[str]) -> dict[str, set[str]]:
    """What the real ``crds bestrefs --files`` picks for ``files``, offline on the warmed cache."""
    location = environments.locate("hst", "ops", bucket.name, bucket.prefix)
    env = launch.apply(bucket.env(), launch.crds_environment(location, bucket.cache, bucket.sample.contexts[-1],
                                                             "flat", allow_fetch=False))
    out = os.path.join(bucket.cache, os.pardir, "bestrefs.json")
    done = subprocess.run([sys.executable, "-m", "crds.bestrefs", "--files", *files, "--new-context",
                           bucket.sample.contexts[-1], "--update-pickle", "--save-pickle", out],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "0 errors" in done.stderr, done.stderr[-2000:]
    picked: dict[str, set[str]] = {}
    with open(out) as handle:
        for line in handle:
            for dataset, header in json.loads(line).items():
                picked[dataset] = {value.lower() for key, value in header.items()
                                   if key.endswith("FILE") and key != "FILE_FORMAT" and "NOT FOUND" not in value}
    return picked


def test_hst_datasets_of_two_instruments_get_exactly_what_crds_bestrefs_picks(hst_bucket, hst_datasets):
    files = [hst_datasets["ACS"], hst_datasets["WFC3"]]
    run = hst_bucket.run("hst", "ops", "--datasets", ",".join(files))
    assert run.returncode == 0, run.stderr
    assert_cache_verified(hst_bucket.cache, hst_bucket.sample)
    fetched = references_in(hst_bucket.cache)
    expected = hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]]
    assert fetched == set(expected["acs"].values()) | set(expected["wfc3"].values())  # no WFPC2, no others
    picked = crds_bestrefs(hst_bucket, files)  # the real crds, after the fact, on the same cache
    assert fetched == picked[files[0]] | picked[files[1]]
    chosen = {line["dataset"]: line["references"] for line in run.events("best references")}
    assert chosen[files[0]] == expected["acs"]
    # The whole mapping closure is there (crds may open any of it), and the cache is complete.
    assert len([p for p in cache_files(hst_bucket.cache) if p.startswith("mappings")]) == 10
    assert run.event("plan")["references"] == len(fetched)


def test_the_dataset_in_the_command_is_found_and_the_command_uses_its_references(hst_bucket, hst_datasets):
    script = ("import sys, os, crds\nfrom crds import data_file\n"
              "header = data_file.get_free_header(sys.argv[1], (), None, 'hst')\n"
              "refs = crds.getreferences(header, observatory='hst')\n"
              "assert all(os.path.isfile(p) for p in refs.values()), refs\n"
              "print(sorted(os.path.basename(p) for p in refs.values()))\n")
    run = hst_bucket.run("hst", "ops", "--", sys.executable, "-c", script, hst_datasets["WFC3"])
    assert run.returncode == 0, run.stderr
    expected = hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]]["wfc3"]
    assert references_in(hst_bucket.cache) == set(expected.values())
    assert run.stdout.strip() == str(sorted(expected.values()))  # crds, offline, found them all in the cache
    assert run.event("warming the references of datasets")["source"] == "command"


#: What an HST calibration program (calacs.e, calwf3.e) does with its raw file's header: each
#: ``*FILE = 'jref$name'`` is a file in the folder that the variable ``jref`` names.
HST_CALIBRATION = """
import json, os, sys
from astropy.io import fits
found = {}
for key, value in fits.getheader(sys.argv[1]).items():
    if key.endswith("FILE") and "$" in str(value):
        folder, name = value.split("$")
        path = os.environ[folder] + name  # IRAF style: the folder ends with its separator
        assert os.path.isfile(path), (key, value, path)
        found[key] = path
print(json.dumps(found))
"""


@pytest.mark.parametrize("layout, pinned", [("flat", False), ("instrument", False), ("flat", True)])
def test_an_hst_calibration_finds_its_references_in_the_iraf_folders(hst_bucket, hst_datasets, layout, pinned):
    """HST's way: crds bestrefs writes the best references into the raw file's header (``jref$...``),
    offline on the warmed cache, and the calibration program opens them through ``jref`` & co.

    As the README and the hst overlays run it: with ``--new-context "$CRDS_CONTEXT"``, without
    which crds bestrefs takes the bucket's latest context, absent from a cache warmed for another.
    """
    dataset = hst_datasets["ACS"]
    context = hst_bucket.sample.contexts[0 if pinned else -1]
    script = (f'"{sys.executable}" -m crds.bestrefs --new-context "$CRDS_CONTEXT" --files "$1" --update-bestrefs && '
              f'exec "{sys.executable}" -c "$2" "$1"')
    run = hst_bucket.run("hst", "ops", "--ref-subdir-mode", layout, "--datasets", dataset,
                         *(["--context", context] if pinned else []),
                         "--", "sh", "-c", script, "sh", dataset, HST_CALIBRATION)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.splitlines()[-1])
    expected = hst_bucket.sample.expected[context]["acs"]
    assert {key.lower(): os.path.basename(path) for key, path in found.items()} == expected
    folder = os.path.join(hst_bucket.cache, "references", "hst", *(["acs"] if layout == "instrument" else []))
    assert {os.path.dirname(path) for path in found.values()} == {folder}


def test_one_datasets_setting_names_each_array_childs_own_exposure(hst_bucket, hst_datasets):
    """CRDS_JOB_DATASETS with the child's index in it: named, so strict, unlike a guess from the command."""
    folder = os.path.dirname(hst_datasets["WFC3"])
    os.rename(hst_datasets["WFC3"], os.path.join(folder, "exposure-4_raw.fits"))
    setting = {"CRDS_JOB_DATASETS": folder + "/exposure-${AWS_BATCH_JOB_ARRAY_INDEX}_raw.fits"}
    run = hst_bucket.run("hst", "ops", env=dict(hst_bucket.env(), AWS_BATCH_JOB_ARRAY_INDEX="4", **setting))
    assert run.returncode == 0, run.stderr
    assert run.event("warming the references of datasets")["datasets"] == [folder + "/exposure-4_raw.fits"]
    expected = hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]]["wfc3"]
    assert references_in(hst_bucket.cache) == set(expected.values())
    run = hst_bucket.run("hst", "ops", env=dict(hst_bucket.env(), AWS_BATCH_JOB_ARRAY_INDEX="5", **setting))
    assert run.returncode == ExitCode.DATASET and "exposure-5_raw.fits" in run.errors[0]["event"], run.stderr


def test_the_dataset_an_array_jobs_shell_script_names_is_found(hst_bucket, hst_datasets):
    """AWS Batch array children pick their exposure in ``sh -c``, by their index."""
    folder = os.path.dirname(hst_datasets["WFC3"])
    os.rename(hst_datasets["WFC3"], os.path.join(folder, "exposure-4_raw.fits"))
    check = f"{sys.executable} -c 'import sys, os; assert os.path.isfile(sys.argv[1])'"
    script = f"exec {check} {folder}/exposure-${{AWS_BATCH_JOB_ARRAY_INDEX}}_raw.fits"
    child = dict(hst_bucket.env(), AWS_BATCH_JOB_ARRAY_INDEX="4")
    run = hst_bucket.run("hst", "ops", "--", "sh", "-c", script, env=child)
    assert run.returncode == 0, run.stderr
    assert run.event("warming the references of datasets")["source"] == "command"
    expected = hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]]["wfc3"]
    assert references_in(hst_bucket.cache) == set(expected.values())


def test_the_dataset_handed_to_a_shell_script_as_its_argument_is_found(hst_bucket, hst_datasets):
    check = f"{sys.executable} -c 'import sys, os; assert os.path.isfile(sys.argv[1])'"
    run = hst_bucket.run("hst", "ops", "--", "sh", "-c", f'exec {check} "$1"', "sh", hst_datasets["WFC3"])
    assert run.returncode == 0, run.stderr
    assert run.event("warming the references of datasets")["source"] == "command"
    expected = hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]]["wfc3"]
    assert references_in(hst_bucket.cache) == set(expected.values())


def hst_association(folder, absent: str = "") -> tuple[str, list[str]]:
    """An ACS association of two exposures of different dates (so of different references), and its raw files."""
    header = context.HST_DATASET_HEADERS["ACS"]
    raws = [sample_datasets.write_fits(os.path.join(folder, "j8bt06o6q_raw.fits"), header),
            sample_datasets.write_fits(os.path.join(folder, "j8bt06o7q_raw.fits"),
                                       dict(header, **{"DATE-OBS": "2017-01-01"}))]
    table = sample_datasets.write_association(os.path.join(folder, "j8bt06010_asn.fits"), "ACS",
                                              {"j8bt06o6q": "EXP-DTH", "j8bt06o7q": "EXP-DTH", "j8bt06011": "PROD-DTH"})
    if absent:
        os.remove(os.path.join(folder, f"{absent}_raw.fits"))
    return table, raws


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_hst_association_warms_what_its_exposures_need(hst_bucket, tmp_path, where):
    """calacs.e on an _asn.fits calibrates the exposures it lists, each by its own header."""
    table, raws = hst_association(str(tmp_path))
    names = [table, *raws]
    if where == "s3":  # the members beside the table, found by listing the bucket
        for path in [table, *raws]:
            with open(path, "rb") as handle:
                hst_bucket.put(f"inputs/{os.path.basename(path)}", handle.read())
        names = [f"s3://{hst_bucket.name}/inputs/{os.path.basename(path)}" for path in [table, *raws]]
    run = hst_bucket.run("hst", "ops", "--", "true", names[0])  # found in the command, as calacs.e's argument
    assert run.returncode == 0, run.stderr
    choices = run.events("best references")
    assert sorted(choice["dataset"] for choice in choices) == names[1:]  # the product (PROD-DTH) is an output
    assert {choice["association"] for choice in choices} == {names[0]}
    wanted = set().union(*crds_bestrefs(hst_bucket, raws).values())
    assert len(wanted) > len(crds_bestrefs(hst_bucket, raws[:1])[raws[0]])  # the dates differ: so do references
    assert references_in(hst_bucket.cache) == wanted


def test_an_association_member_without_its_raw_file_is_a_dataset_error(hst_bucket, tmp_path):
    table, _ = hst_association(str(tmp_path), absent="j8bt06o7q")
    run = hst_bucket.run("hst", "ops", "--datasets", table)
    assert run.returncode == ExitCode.DATASET, run.stderr
    assert "j8bt06o7q" in run.errors[0]["event"] and not references_in(hst_bucket.cache)


def test_a_guess_crds_chooses_nothing_for_is_no_dataset(hst_bucket, tmp_path):
    """A FITS file that is no exposure (a catalog) names no reference: the whole context, as with no dataset."""
    catalog = sample_datasets.write_fits(str(tmp_path / "catalog.fits"), {"INSTRUME": "ACS"})
    run = hst_bucket.run("hst", "ops", "--", "true", catalog)
    assert run.returncode == 0, run.stderr
    assert run.event("a command argument named like a dataset is not one crds can read: skipped")["argument"] == catalog
    everything = {name for kinds in hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]].values()
                  for name in kinds.values()}
    assert references_in(hst_bucket.cache) > everything
    # Named, it is meant: kept, with a warning, and it needs nothing.
    run = hst_bucket.run("hst", "ops", "--dry-run", "--datasets", catalog)
    assert run.returncode == 0, run.stderr
    assert run.event("crds chose no reference for a named dataset: is it an exposure?")["dataset"] == catalog
    assert json.loads(run.stdout)["datasets"][0]["references"] == {}


def test_all_references_keeps_the_whole_context(hst_bucket, hst_datasets):
    run = hst_bucket.run("hst", "ops", "--all-references", "--", "true", hst_datasets["ACS"])
    assert run.returncode == 0, run.stderr
    everything = {name for kinds in hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]].values()
                  for name in kinds.values()}
    assert references_in(hst_bucket.cache) > everything  # all of the context, not only the best ones
    assert not run.events("warming the references of datasets")


def test_a_roman_asdf_dataset(roman_bucket, tmp_path):
    path = sample_datasets.write_asdf(str(tmp_path / "l1_img.asdf"), context.ROMAN_DATASET_HEADER)
    run = roman_bucket.run("roman", "ops", "--", "true", path)
    assert run.returncode == 0, run.stderr
    expected = roman_bucket.sample.expected[roman_bucket.sample.contexts[-1]]["wfi"]
    assert references_in(roman_bucket.cache) == set(expected.values())
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)


def test_crds_failing_on_the_context_stops_a_selective_warm(roman_bucket, tmp_path):
    """Our parser reads what a mapping names; crds also checks each row against its parkey, and refuses."""
    publish_rmap(roman_bucket, "roman_wfi_gain_0001.rmap",
                 "Match({('WFI01', 'EXTRA') : 'roman_wfi_gain_0001.asdf'})", {})
    path = sample_datasets.write_asdf(str(tmp_path / "l1_img.asdf"), context.ROMAN_DATASET_HEADER)
    run = roman_bucket.run("roman", "ops", "--", "true", path)
    assert run.returncode == ExitCode.BUCKET_CONTENT, run.stderr
    (error,) = run.errors
    assert "crds failed choosing references for" in error["event"]
    assert "roman_wfi_gain_0001.rmap" in error["event"] and "wrong length" in error["event"]
    assert not references_in(roman_bucket.cache)


def test_a_real_roman_datamodel_file(roman_bucket, tmp_path):
    """A level-1 file as roman_datamodels writes it (tagged tree, astropy Time), read by crds."""
    rdm = pytest.importorskip("roman_datamodels.datamodels", reason="roman_datamodels is in the test extra")
    from astropy.time import Time

    model = rdm.ScienceRawModel.create_fake_data()
    model.meta.instrument.detector = "WFI01"
    model.meta.instrument.optical_element = "F158"
    model.meta.exposure.type = "WFI_IMAGE"
    model.meta.exposure.start_time = Time("2025-01-01T00:00:00", format="isot")
    path = str(tmp_path / "r0000101001001001001_0001_wfi01_uncal.asdf")
    model.save(path)
    run = roman_bucket.run("roman", "ops", "--datasets", path)
    assert run.returncode == 0, run.stderr
    expected = roman_bucket.sample.expected[roman_bucket.sample.contexts[-1]]["wfi"]
    assert references_in(roman_bucket.cache) == set(expected.values())


def test_an_s3_dataset_is_read_by_its_header_only(s3, hst_bucket, hst_datasets, tmp_path):
    big = sample_datasets.write_fits(str(tmp_path / "big_raw.fits"), context.HST_DATASET_HEADERS["ACS"],
                                     data_bytes=16 * 2**20)
    with open(big, "rb") as handle:
        hst_bucket.put("inputs/big_raw.fits", handle.read())
    url = f"s3://{hst_bucket.name}/inputs/big_raw.fits"
    with FaultProxy(s3.endpoint) as proxy:
        run = hst_bucket.run("hst", "ops", "--datasets", url, AWS_ENDPOINT_URL_S3=proxy.endpoint)
        gets = proxy.gets("big_raw")
    assert run.returncode == 0, run.stderr
    expected = hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]]["acs"]
    assert references_in(hst_bucket.cache) == set(expected.values())
    assert gets and all(get.range for get in gets), "the dataset was read whole"
    spans = [re.fullmatch(r"bytes=(\d+)-(\d+)", get.range) for get in gets]
    assert all(spans), [get.range for get in gets]  # bounded ranges only: no open-ended read of the rest
    read = sum(int(m.group(2)) - int(m.group(1)) + 1 for m in spans)
    assert read < 2 * 2**20 < os.path.getsize(big)


def test_an_http_dataset_is_read_by_its_header_only(s3, hst_bucket, hst_datasets, tmp_path):
    """An http(s) URL (a web archive, a presigned URL) is read through fsspec's HTTP backend, in ranges."""
    big = sample_datasets.write_fits(str(tmp_path / "big_raw.fits"), context.HST_DATASET_HEADERS["ACS"],
                                     data_bytes=16 * 2**20)
    with open(big, "rb") as handle:  # readable by anyone, as an archive's file or a presigned URL's
        s3.client().put_object(Bucket=hst_bucket.name, Key="inputs/big_raw.fits", Body=handle.read(),
                               ACL="public-read")
    with FaultProxy(s3.endpoint) as proxy:
        url = f"{proxy.endpoint}/{hst_bucket.name}/inputs/big_raw.fits"
        run = hst_bucket.run("hst", "ops", "--", "true", url)
        gets = proxy.gets("big_raw")
    assert run.returncode == 0, run.stderr
    assert run.event("warming the references of datasets")["datasets"] == [url]
    expected = hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]]["acs"]
    assert references_in(hst_bucket.cache) == set(expected.values())
    assert gets and sum(int(end) - int(start) + 1 for start, end in
                        (re.fullmatch(r"bytes=(\d+)-(\d+)", get.range).groups() for get in gets)) < 2 * 2**20


def test_a_presigned_dataset_url_is_named_by_its_path_not_its_query(s3, hst_bucket, hst_datasets):
    """A presigned URL's signature follows the name: the suffix and the format are the path's."""
    with open(hst_datasets["ACS"], "rb") as handle:
        hst_bucket.put("inputs/acs_raw.fits", handle.read())
    url = s3.client().generate_presigned_url("get_object", Params={"Bucket": hst_bucket.name,
                                                                   "Key": "inputs/acs_raw.fits"})
    assert "?" in url and not url.endswith(".fits")
    run = hst_bucket.run("hst", "ops", "--", "true", url)  # found in the command: by its path's suffix
    assert run.returncode == 0, run.stderr
    (logged,) = run.event("warming the references of datasets")["datasets"]
    assert logged.split("?")[0] == url.split("?")[0]
    signature = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["Signature"][0]
    assert signature not in run.stderr and "Signature=[redacted]" in logged  # the logs keep no secret
    expected = hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]]["acs"]
    assert references_in(hst_bucket.cache) == set(expected.values())


def test_dry_run_prints_each_datasets_choice_and_writes_nothing(hst_bucket, hst_datasets):
    run = hst_bucket.run("hst", "ops", "--dry-run", "--datasets", hst_datasets["ACS"])
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    expected = hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]]["acs"]
    assert report["datasets"] == [{"dataset": hst_datasets["ACS"], "instrument": "acs", "references": expected,
                                   "not_applicable": [], "unmatched": {}, "candidates": {}}]
    assert report["references_for"] == "--datasets"
    assert {f["name"] for f in report["files"] if f["kind"] == "reference"} == set(expected.values())
    assert report["totals"]["fetch_bytes"] == sum(f["size"] for f in report["files"])
    assert not cache_files(hst_bucket.cache)


def test_a_type_with_no_match_is_reported_and_the_rest_is_warmed(hst_bucket, tmp_path):
    header = dict(context.HST_DATASET_HEADERS["ACS"], FILTER1="F999W")  # no flat for this filter
    path = sample_datasets.write_fits(str(tmp_path / "odd_raw.fits"), header)
    run = hst_bucket.run("hst", "ops", "--datasets", path)
    assert run.returncode == 0, run.stderr
    warning = run.event("no reference matched some types of a dataset; the calibration decides whether that is fatal")
    assert list(warning["unmatched"]) == ["pfltfile"]
    expected = hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]]["acs"]
    assert references_in(hst_bucket.cache) == {expected["biasfile"], expected["darkfile"]}


def _fails_with_dataset_error(run, pattern: str, cache: str) -> None:
    assert run.returncode == ExitCode.DATASET, run.stderr
    assert len(run.errors) == 1 and re.search(pattern, run.errors[0]["event"]), run.errors
    assert not references_in(cache)  # nothing fetched for a job that cannot run
    assert not [p for p in cache_files(cache) if os.path.basename(p).startswith(".")]


def test_a_dataset_that_does_not_exist(hst_bucket, tmp_path):
    run = hst_bucket.run("hst", "ops", "--datasets", str(tmp_path / "nowhere_raw.fits"))
    _fails_with_dataset_error(run, r"nowhere_raw\.fits: it does not exist; check the path", hst_bucket.cache)
    assert not cache_files(hst_bucket.cache)  # a local one is checked before anything is fetched
    run = hst_bucket.run("hst", "ops", "--datasets", f"s3://{hst_bucket.name}/inputs/nowhere_raw.fits")
    _fails_with_dataset_error(run, r"nowhere_raw\.fits: it does not exist", hst_bucket.cache)


def test_a_dataset_whose_header_cannot_be_read(hst_bucket, tmp_path):
    path = tmp_path / "garbage_raw.fits"
    path.write_bytes(b"this is not FITS\n" * 100)
    run = hst_bucket.run("hst", "ops", "--datasets", str(path))
    _fails_with_dataset_error(run, r"garbage_raw\.fits: its header cannot be read", hst_bucket.cache)


def test_an_instrument_the_context_does_not_cover(hst_bucket, tmp_path):
    header = dict(context.HST_DATASET_HEADERS["WFC3"], INSTRUME="NICMOS", DETECTOR="IR")
    path = sample_datasets.write_fits(str(tmp_path / "n_raw.fits"), header)
    run = hst_bucket.run("hst", "ops", "--datasets", path)
    _fails_with_dataset_error(run, r"instrument nicmos, which context hst_0051\.pmap does not cover "
                                   r"\(it covers acs, wfc3, wfpc2\)", hst_bucket.cache)


def test_without_the_crds_library_a_clear_usage_error(hst_bucket, hst_datasets, tmp_path):
    """An image without crds: a module that cannot be imported stands in for the absent package."""
    shadow = tmp_path / "shadow" / "crds"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named crds')\n")
    run = hst_bucket.run("hst", "ops", "--datasets", hst_datasets["ACS"], PYTHONPATH=str(shadow.parent))
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert "needs the crds library" in run.errors[0]["event"]
    assert "crds-job[crds]" in run.errors[0]["event"] and "--all-references" in run.errors[0]["event"]


def parameter_file(folder) -> str:
    """An stpipe parameter file: ASDF, named like a dataset, with no instrument in it."""
    import asdf

    path = str(folder / "params.asdf")
    asdf.AsdfFile({"class": "romancal.flatfield.FlatFieldStep", "name": "flat_field", "parameters": {}}).write_to(path)
    return path


def test_guesses_in_the_command_that_are_not_datasets_are_skipped(hst_bucket, hst_datasets, tmp_path):
    """A parameter file, an output to be, an output URL: none stops the job; the real dataset counts."""
    params = parameter_file(tmp_path)
    output_url = f"s3://{hst_bucket.name}/outputs/x_cal.fits"
    run = hst_bucket.run("hst", "ops", "--", "true", params, str(tmp_path / "out_cal.fits"), output_url,
                         hst_datasets["ACS"])
    assert run.returncode == 0, run.stderr
    expected = hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]]["acs"]
    assert references_in(hst_bucket.cache) == set(expected.values())
    skipped = {line["argument"]: line["reason"] for line in
               run.events("a command argument named like a dataset is not one crds can read: skipped")}
    assert set(skipped) == {params, output_url}
    assert "names no instrument" in skipped[params] and skipped[output_url] == "it does not exist"
    outputs = run.event("command arguments named like datasets but not files: taken as outputs")
    assert outputs["arguments"] == [str(tmp_path / "out_cal.fits")]


def test_a_guessed_output_url_s3_refuses_is_skipped_but_a_named_one_is_not(s3, hst_bucket, hst_datasets):
    """Without s3:ListBucket, S3 answers a missing key with 403: for a guess, an output to be."""
    output_url = f"s3://{hst_bucket.name}/outputs/x_cal.fits"
    with FaultProxy(s3.endpoint) as proxy:
        proxy.rules = [Rule("403", path="outputs/x_cal"), Rule("403", path="outputs/x_cal", method="HEAD")]
        run = hst_bucket.run("hst", "ops", "--", "true", output_url, hst_datasets["ACS"],
                             AWS_ENDPOINT_URL_S3=proxy.endpoint)
        assert run.returncode == 0, run.stderr
        skipped = [line["argument"] for line in
                   run.events("a command argument named like a dataset is not one crds can read: skipped")]
        assert skipped == [output_url]
        expected = hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]]["acs"]
        assert references_in(hst_bucket.cache) == set(expected.values())
        named = hst_bucket.run("hst", "ops", "--datasets", output_url, AWS_ENDPOINT_URL_S3=proxy.endpoint)
    assert named.returncode == ExitCode.S3_ACCESS, named.stderr  # named: meant, so its refusal stops the warm


def test_when_no_guess_is_a_dataset_the_whole_context_is_warmed(hst_bucket, tmp_path):
    params = parameter_file(tmp_path)
    run = hst_bucket.run("hst", "ops", "--", "true", params)
    assert run.returncode == 0, run.stderr
    everything = {name for kinds in hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]].values()
                  for name in kinds.values()}
    assert references_in(hst_bucket.cache) > everything
    run.event("no dataset among the command's arguments: warming the whole context")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_compressed_fits_datasets(hst_bucket, hst_datasets, tmp_path, where):
    import gzip
    import shutil

    packed = tmp_path / "acs_raw.fits.gz"
    with open(hst_datasets["ACS"], "rb") as source, gzip.open(packed, "wb") as target:
        shutil.copyfileobj(source, target)
    dataset = str(packed)
    if where == "s3":  # astropy decompresses a local file itself, but not a stream
        hst_bucket.put("inputs/acs_raw.fits.gz", packed.read_bytes())
        dataset = f"s3://{hst_bucket.name}/inputs/acs_raw.fits.gz"
    run = hst_bucket.run("hst", "ops", "--datasets", dataset)
    assert run.returncode == 0, run.stderr
    expected = hst_bucket.sample.expected[hst_bucket.sample.contexts[-1]]["acs"]
    assert references_in(hst_bucket.cache) == set(expected.values())


def test_a_dataset_the_job_may_not_read_is_an_s3_access_error(s3, hst_bucket, hst_datasets):
    with open(hst_datasets["ACS"], "rb") as handle:
        hst_bucket.put("inputs/acs_raw.fits", handle.read())
    with FaultProxy(s3.endpoint) as proxy:
        proxy.rules = [Rule("403", path="inputs/acs_raw", method="HEAD"), Rule("403", path="inputs/acs_raw")]
        run = hst_bucket.run("hst", "ops", "--datasets", f"s3://{hst_bucket.name}/inputs/acs_raw.fits",
                             AWS_ENDPOINT_URL_S3=proxy.endpoint)
    assert run.returncode == ExitCode.S3_ACCESS, run.stderr  # retryable, not a verdict on the dataset
    assert "acs_raw.fits cannot be read" in run.errors[0]["event"]
    assert not references_in(hst_bucket.cache)


@pytest.mark.parametrize("fault", ["503", "500"])
@pytest.mark.parametrize("named", [True, False])
def test_a_dataset_s3_fails_to_serve_is_an_s3_access_error(s3, hst_bucket, hst_datasets, fault, named):
    """S3's 5xx reach crds as s3fs's OSError: retryable (69), not "not a FITS file" (66, final) nor skipped."""
    with open(hst_datasets["ACS"], "rb") as handle:
        hst_bucket.put("inputs/acs_raw.fits", handle.read())
    url = f"s3://{hst_bucket.name}/inputs/acs_raw.fits"
    with FaultProxy(s3.endpoint) as proxy:
        proxy.rules = [Rule(fault, path="inputs/acs_raw", method="HEAD"), Rule(fault, path="inputs/acs_raw")]
        args = ("--datasets", url) if named else ("--", "true", url)
        run = hst_bucket.run("hst", "ops", *args, AWS_ENDPOINT_URL_S3=proxy.endpoint)
    assert run.returncode == ExitCode.S3_ACCESS, run.stderr
    assert "acs_raw.fits cannot be read" in run.errors[0]["event"] and "run the job again" in run.errors[0]["event"]
    assert not references_in(hst_bucket.cache)


def test_a_dataset_url_s3_cannot_have_is_a_dataset_error(hst_bucket):
    """Not a retryable S3 error (69): no attempt will make the URL valid."""
    run = hst_bucket.run("hst", "ops", "--datasets", "s3://Bad_Bucket!/x_raw.fits")
    assert run.returncode == ExitCode.DATASET, run.stderr
    assert "check the dataset's URL" in run.errors[0]["event"]
    assert not references_in(hst_bucket.cache)


@pytest.mark.parametrize("error, reason", [
    (OSError(16, "Service Unavailable"), "access"),  # s3fs's 503: may pass
    (OSError(121, "Internal Server Error"), "access"),
    (OSError(22, "Invalid Request"), "unreadable"),  # s3fs's 400: will not
    (OSError("Empty or corrupt FITS file"), "unreadable"),  # astropy's
])
def test_only_failures_that_may_pass_make_a_dataset_retryable(error, reason):
    from crds_job import bestrefs

    assert bestrefs._read_failure(error, url=True)[0] == reason


@pytest.mark.parametrize("url, reason", [(False, "forbidden"), (True, "denied")])
def test_a_local_file_the_job_may_not_read_is_the_datasets_fault_an_objects_is_s3s(url, reason):
    """A file's mode stays as it is (66, final); S3's 403 may pass with a policy or role change (69)."""
    from crds_job import bestrefs

    assert bestrefs._read_failure(PermissionError(13, "Permission denied"), url)[0] == reason
    answer = {"dataset": "s3://b/x_raw.fits" if url else "/data/x_raw.fits", "error": reason, "message": "denied"}
    with pytest.raises(S3AccessError if url else DatasetError):
        bestrefs.choice_of(answer, "hst_0001.pmap")


def crds_child(process: subprocess.Popen, proxy: FaultProxy) -> int:
    """The pid of crds-job's crds child, once it is reading the (slowed) dataset."""
    import time

    for _ in range(600):  # the child starts once the mappings are in
        with open(f"/proc/{process.pid}/task/{process.pid}/children") as listing:
            children = listing.read().split()
        if children and proxy.gets("inputs/acs_raw"):
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError("the crds child never started reading the dataset")


@contextlib.contextmanager
def choosing_slowly(s3, bucket, datasets) -> Iterator[tuple[subprocess.Popen, int]]:
    """A selective warm whose crds child is reading an S3 dataset that takes 30 s: the warm, the child's pid."""
    with open(datasets["ACS"], "rb") as handle:
        bucket.put("inputs/acs_raw.fits", handle.read())
    with FaultProxy(s3.endpoint) as proxy:
        proxy.rules = [Rule("slow", path="inputs/acs_raw", delay=30)]
        process = subprocess.Popen(
            [sys.executable, "-m", "crds_job", "hst", "ops", "--datasets", f"s3://{bucket.name}/inputs/acs_raw.fits"],
            env=bucket.env(AWS_ENDPOINT_URL_S3=proxy.endpoint), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        try:
            yield process, crds_child(process, proxy)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_crds_killed_while_choosing_is_not_called_a_bucket_fault(s3, hst_bucket, hst_datasets):
    """An out-of-memory kill of the crds child: one line saying so, and not 65, which ends a Job for good."""
    import signal

    with choosing_slowly(s3, hst_bucket, hst_datasets) as (process, child):
        os.kill(child, signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == ExitCode.INTERNAL, stderr
    assert "crds was killed by SIGKILL while choosing references" in stderr
    assert not references_in(hst_bucket.cache)


def test_the_crds_child_ends_with_a_warm_killed_outright(s3, hst_bucket, hst_datasets):
    """SIGKILL cannot be passed on: the child asked the kernel to end it with its parent (PR_SET_PDEATHSIG)."""
    import signal
    import time

    with choosing_slowly(s3, hst_bucket, hst_datasets) as (process, child):
        process.send_signal(signal.SIGKILL)
        process.wait()
        for _ in range(200):
            try:
                with open(f"/proc/{child}/stat") as stat:
                    if stat.read().rsplit(")", 1)[1].split()[0] == "Z":  # gone, awaiting its reaper
                        break
            except FileNotFoundError:
                break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            raise AssertionError("the crds child outlived the killed warm")


@pytest.mark.skipif(not READ_ONLY_MOUNTS, reason="needs user+mount namespaces (unshare -rm) for a read-only bind mount")
def test_a_selective_warm_on_a_read_only_cache_holding_the_needed_files(hst_bucket, hst_datasets):
    assert hst_bucket.run("hst", "ops", "--datasets", hst_datasets["WFC3"]).returncode == 0
    before = snapshot(hst_bucket.cache)
    run = run_read_only(hst_bucket, "hst", "ops", "--", "true", hst_datasets["WFC3"])
    assert run.returncode == 0, run.stderr
    assert run.events("read-only cache holds every planned file") and snapshot(hst_bucket.cache) == before
    run = run_read_only(hst_bucket, "hst", "ops", "--", "true", hst_datasets["ACS"])  # other references
    assert run.returncode == ExitCode.CACHE and "is on a read-only mount and lacks" in run.errors[0]["event"]
