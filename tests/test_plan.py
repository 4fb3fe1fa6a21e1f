"""Planning: the whole mapping closure, references narrowed by instrument, metadata required."""

from __future__ import annotations

import pytest

from crds_job import mapping, plan
from crds_job.errors import BucketContentError, UsageError
from crds_job.server_config import FileInfo


def mp(name, kind, children, instrument=""):
    return mapping.Mapping(name=name, kind=kind, header={"instrument": instrument}, children=tuple(children))


MAPPINGS = {m.name: m for m in [
    mp("hst_0001.pmap", "pmap", ["hst_acs_0001.imap", "hst_wfpc2_0001.imap"]),
    mp("hst_acs_0001.imap", "imap", ["hst_acs_biasfile_0001.rmap"], "ACS"),
    mp("hst_wfpc2_0001.imap", "imap", ["hst_wfpc2_flatfile_0001.rmap"], "WFPC2"),
    mp("hst_acs_biasfile_0001.rmap", "rmap", ["a_bia.fits", "b_bia.fits"], "ACS"),
    mp("hst_wfpc2_flatfile_0001.rmap", "rmap", ["x1a1234bu.r4h", "a_bia.fits"], "WFPC2"),
]}
NAMES = list(MAPPINGS) + ["a_bia.fits", "b_bia.fits", "x1a1234bu.r4h", "x1a1234bu.r4d"]
METADATA = {name: FileInfo(size=len(name), sha1="") for name in NAMES}


def test_whole_context():
    p = plan.build("hst_0001.pmap", MAPPINGS, METADATA)
    assert [e.name for e in p.rules] == sorted(MAPPINGS)
    assert [e.name for e in p.references] == ["a_bia.fits", "b_bia.fits", "x1a1234bu.r4d", "x1a1234bu.r4h"]
    assert p.instruments == ("acs", "wfpc2")
    assert p.total_bytes == sum(len(n) for n in NAMES)
    geis = {e.name: e for e in p.references}["x1a1234bu.r4d"]
    assert geis.instrument == "wfpc2", "a GEIS data partner goes where its header goes"


def test_a_digest_is_checked_against_the_published_sha1_when_there_is_one():
    published = plan.Entry("a_bia.fits", "reference", 10, "ab" * 20)
    assert published.accepts_sha1("ab" * 20)
    assert not published.accepts_sha1("cd" * 20)
    assert plan.Entry("a_bia.fits", "reference", 10, "").accepts_sha1("cd" * 20), "no sha1 published: size only"


def test_instruments_narrow_references_not_mappings():
    p = plan.build("hst_0001.pmap", MAPPINGS, METADATA, instruments=["acs"])
    assert len(p.rules) == len(MAPPINGS)
    assert {e.name for e in p.references} == {"a_bia.fits", "b_bia.fits"}
    assert plan.build("hst_0001.pmap", MAPPINGS, METADATA, mappings_only=True).references == ()


def test_unknown_instrument_lists_the_known_ones():
    with pytest.raises(UsageError, match="nircam not in context hst_0001.pmap.*acs, wfpc2"):
        plan.build("hst_0001.pmap", MAPPINGS, METADATA, instruments=["nircam"])


def test_an_imap_naming_another_instruments_rmap_is_a_bucket_error():
    """Its references would be written into another instrument's folder of the cache."""
    mappings = dict(MAPPINGS)
    mappings["hst_wfpc2_flatfile_0001.rmap"] = mp("hst_wfpc2_flatfile_0001.rmap", "rmap", ["x1a1234bu.r4h"], "ACS")
    with pytest.raises(BucketContentError, match="hst_wfpc2_0001.imap .instrument wfpc2. names "
                                                 "hst_wfpc2_flatfile_0001.rmap, of instrument acs"):
        plan.build("hst_0001.pmap", mappings, METADATA)


def test_a_file_absent_from_the_metadata_is_a_bucket_error_naming_its_parent():
    metadata = dict(METADATA)
    del metadata["b_bia.fits"]
    with pytest.raises(BucketContentError, match="b_bia.fits, named by hst_acs_biasfile_0001.rmap"):
        plan.build("hst_0001.pmap", MAPPINGS, metadata)


PICKLE = plan.Entry("hst_0001.pmap.pkl", "pickle", 1234, "")
LISTING = {"acs": ["a_bia.fits", "b_bia.fits"], "wfpc2": ["x1a1234bu.r4h", "a_bia.fits"]}


def test_a_pickled_context_plans_from_crds_listing_of_it():
    p = plan.from_listing("hst_0001.pmap", PICKLE, LISTING, METADATA)
    assert p.rules == (PICKLE,) and p.form == "pickle" and p.pickles == 1
    assert PICKLE.area == "pickles"
    assert [e.name for e in p.references] == ["a_bia.fits", "b_bia.fits", "x1a1234bu.r4d", "x1a1234bu.r4h"]
    assert {e.name: e.instrument for e in p.references}["x1a1234bu.r4d"] == "wfpc2"
    assert p.instruments == ("acs", "wfpc2")
    assert p.total_bytes == PICKLE.size + sum(len(n) for n in NAMES if not n.endswith("map"))
    narrowed = plan.from_listing("hst_0001.pmap", PICKLE, LISTING, METADATA, instruments=["wfpc2"])
    assert {e.name for e in narrowed.references} == {"x1a1234bu.r4h", "x1a1234bu.r4d", "a_bia.fits"}
    assert plan.from_listing("hst_0001.pmap", PICKLE, LISTING, METADATA, mappings_only=True).references == ()
    for mappings_only in (False, True):
        with pytest.raises(UsageError, match="nircam not in context hst_0001.pmap.*acs, wfpc2"):
            plan.from_listing("hst_0001.pmap", PICKLE, LISTING, METADATA, ["nircam"], mappings_only)


@pytest.mark.parametrize("listing, words", [
    ({"../acs": ["a_bia.fits"]}, "not an instrument's name"),
    ({"acs": "a_bia.fits"}, "something else than file names"),
    ({"acs": [3]}, "something else than file names"),
    ({"acs": ["c_bia.fits"]}, "c_bia.fits, named by hst_0001.pmap.pkl, is absent from the bucket's download_metadata"),
])
def test_crds_listing_of_a_pickle_is_checked_as_untrusted_data(listing, words):
    with pytest.raises(BucketContentError, match=words.replace(".", r"\.").replace("(", r"\(")):
        plan.from_listing("hst_0001.pmap", PICKLE, listing, METADATA)
