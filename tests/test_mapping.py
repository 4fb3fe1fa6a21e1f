"""Reading mappings as data: the real syntax is accepted, anything else refused."""

from __future__ import annotations

import pytest

from crds_job import mapping
from crds_job.sample.context import render_mapping, roman

RMAP_HEADER = {
    "mapping": "REFERENCE", "observatory": "HST", "instrument": "COS", "filekind": "DEADTAB",
    "name": "hst_cos_deadtab_0250.rmap", "derived_from": "x", "parkey": (("DETECTOR",), ("DATE-OBS", "TIME-OBS")),
}


def rmap(selector: str, **header) -> str:
    return render_mapping({**RMAP_HEADER, **header}, selector)


def test_real_selectors_yield_files_not_keys_nor_special_values():
    text = rmap("""Match({
    ('FUV',) : UseAfter({
        '1996-10-01 00:00:00' : 's7g1700gl_dead.fits',
        '2009-05-11 00:00:00' : 'N/A',
    }),
    ('NUV', 'ANY|OTHER') : UseAfter({
        '1996-10-01 00:00:00' : 's7g1700ql_dead.fits',
    }),
    ('BRK',) : Bracket({1.0 : ('a_brk.fits', 'b_brk.fits')}),
    ('OMITTED',) : 'OMIT',
    ('VER',) : SelectVersion({'<3.1' : 'x1a1234bu.r4h', 'default' : 's7g1700gl_dead.fits'}),
})""")
    parsed = mapping.parse("hst_cos_deadtab_0250.rmap", text, "hst")
    assert parsed.children == (
        "s7g1700gl_dead.fits", "s7g1700ql_dead.fits", "a_brk.fits", "b_brk.fits", "x1a1234bu.r4h",
    )
    assert parsed.instrument == "cos" and parsed.kind == "rmap"


def test_sample_mappings_are_accepted_by_the_real_crds_client(tmp_path, monkeypatch):
    """Our header checksum is the client's: crds loads the sample context with checks on."""
    rmap_module = pytest.importorskip("crds.core.rmap", reason="the crds client is in the test extra")
    sample = roman()
    folder = tmp_path / "mappings" / "roman"
    folder.mkdir(parents=True)
    for name, data in sample.mappings.items():
        (folder / name).write_bytes(data)
    monkeypatch.setenv("CRDS_PATH", str(tmp_path))
    monkeypatch.setenv("CRDS_READONLY_CACHE", "1")
    for name, data in sample.mappings.items():
        loaded = rmap_module.asmapping(str(folder / name), cached=False, ignore_checksum=False)
        assert loaded.header["sha1sum"] == mapping.header_checksum(data.decode())


@pytest.mark.parametrize("bad_name", [
    "../x.fits", "/etc/passwd", "a/b.fits", ".hidden.fits", "x\x00.fits", "x\n.fits",
    "caf\u00e9.fits", "x\u2215y.fits", "..", "a..b.fits", "", "x" * 300,
])
def test_unsafe_names_are_refused(bad_name):
    with pytest.raises(mapping.MappingError, match="not a plain CRDS file name"):
        mapping.parse("hst_cos_deadtab_0250.rmap", rmap(f"Match({{('FUV',) : {bad_name!r}}})"), "hst")


@pytest.mark.parametrize("selector, message", [
    ("Match({('FUV',) : 'hst_cos_deadtab_0001.rmap'})", "may name only reference files"),
    ("Match({('FUV',) : __import__('os').system('true')})", "something other than a CRDS selector"),
    ("Match({('FUV',) : open('x')})", "something other than a CRDS selector"),
    ("Match({('FUV',) : x.y})", "Attribute is not allowed"),
    ("Match({('FUV',) : lambda: 1})", "Lambda is not allowed"),
    ("Match({('FUV',) : f'{x}.fits'})", "JoinedStr is not allowed"),
    ("Match({**x})", "dict unpacking"),
    ("Match({('FUV',) : 'a.fits'}, extra=1)", "keyword arguments"),
    ("Match(" * 40 + "'a.fits'" + ")" * 40, "nested deeper"),
])
def test_hostile_selectors_are_refused(selector, message):
    with pytest.raises(mapping.MappingError, match=message):
        mapping.parse("hst_cos_deadtab_0250.rmap", rmap(selector), "hst")


@pytest.mark.parametrize("text, message", [
    ("import os\nheader = {}\nselector = {}", "only header, selector and comment"),
    ("header = {}\nselector = {}\nheader = {}", "defined twice"),
    ("header = {'a': print(1)}\nselector = {}", "not a literal dict"),
    ("selector = {}", "header or selector is missing"),
    ("header = {\n", "not parseable"),
    ("(" * 300 + ")" * 300, "not parseable"),
])
def test_malformed_mappings_are_refused(text, message):
    with pytest.raises(mapping.MappingError, match=message):
        mapping.parse("hst_cos_deadtab_0250.rmap", text, "hst", check_header_sum=False)


def test_wrong_header_checksum_kind_and_observatory_are_refused():
    good = rmap("Match({('FUV',) : 'a.fits'})")
    with pytest.raises(mapping.MappingError, match="header sha1sum"):
        mapping.parse("hst_cos_deadtab_0250.rmap", good.replace("'a.fits'", "'b.fits'"), "hst")
    with pytest.raises(mapping.MappingError, match="expected 'INSTRUMENT'"):
        mapping.parse("hst_cos_0001.imap", good, "hst")
    with pytest.raises(mapping.MappingError, match="expected 'roman'"):
        mapping.parse("hst_cos_deadtab_0250.rmap", good, "roman")


@pytest.mark.parametrize("instrument", ["../../outside", "..", "wfi/../../config", "/tmp/x", "", None, "w fi"])
def test_an_instrument_that_is_not_a_name_is_refused(instrument):
    """It becomes a folder of the cache (``--ref-subdir-mode instrument``): never a path."""
    header = {} if instrument is None else {"instrument": instrument}
    text = rmap("Match({('FUV',) : 'a.fits'})", **header)
    if instrument is None:
        text = text.replace("    'instrument' : 'COS',\n", "")
        assert "instrument" not in text
    with pytest.raises(mapping.MappingError, match="header 'instrument'"):
        mapping.parse("hst_cos_deadtab_0250.rmap", text, "hst", check_header_sum=False)
    assert mapping.parse("hst_cos_deadtab_0250.rmap", rmap("Match({('FUV',) : 'a.fits'})"), "hst").instrument == "cos"


def test_line_ends_are_read_as_the_crds_client_reads_them_by_the_caller():
    """The header checksum is of the text as crds reads a mapping (text mode): CRLF is LF."""
    text = rmap("Match({('FUV',) : 'a.fits'})")
    crlf = text.replace("\n", "\r\n")
    with pytest.raises(mapping.MappingError, match="header sha1sum"):
        mapping.parse("hst_cos_deadtab_0250.rmap", crlf, "hst")  # raw: the caller translates (warm)
    assert mapping.parse("hst_cos_deadtab_0250.rmap", crlf.replace("\r\n", "\n"), "hst").children == ("a.fits",)


def test_a_pmap_names_imaps_and_an_imap_names_rmaps_only():
    pmap = render_mapping({"mapping": "PIPELINE", "observatory": "ROMAN", "name": "roman_0001.pmap",
                           "parkey": ("X",), "derived_from": "x"}, "{'WFI' : 'roman_wfi_0001.imap', 'X': 'N/A'}")
    assert mapping.parse("roman_0001.pmap", pmap, "roman").children == ("roman_wfi_0001.imap",)
    deep = pmap.replace("roman_wfi_0001.imap", "roman_wfi_dark_0001.rmap")
    with pytest.raises(mapping.MappingError, match="pmap may name only imap"):
        mapping.parse("roman_0001.pmap", deep, "roman", check_header_sum=False)
