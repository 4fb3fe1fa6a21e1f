"""Reading mappings as data: the real syntax is accepted, anything else refused."""

from __future__ import annotations

import pytest

from crds_job import mapping
from crds_job.sample.context import render_mapping, roman
from crds_job.warm import crds_ignores_mapping_checksum

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


ROMAN_HEADERS = {
    "pmap": {"mapping": "PIPELINE", "observatory": "ROMAN", "derived_from": "x",
             "parkey": ("ROMAN.META.INSTRUMENT.NAME",)},
    "imap": {"mapping": "INSTRUMENT", "observatory": "ROMAN", "instrument": "WFI", "derived_from": "x",
             "parkey": ("REFTYPE",)},
    "rmap": {"mapping": "REFERENCE", "observatory": "ROMAN", "instrument": "WFI", "filekind": "DARK",
             "derived_from": "x", "classes": ("Match", "UseAfter"), "file_ext": ".asdf", "filetype": "DARK",
             "suffix": "dark", "text_descr": "d",
             "parkey": (("ROMAN.META.INSTRUMENT.DETECTOR",), ("ROMAN.META.EXPOSURE.START_TIME",))},
}


def roman_mapping(name: str, selector: str) -> str:
    kind = name.rsplit(".", 1)[1]
    return render_mapping({**ROMAN_HEADERS[kind], "name": name}, selector)


def duplicate_keys(serial: int) -> dict[str, str]:
    """Repeated keys, as a real HST rmap has them: the client keeps the last value of each."""
    pmap, imap, rmaps = f"roman_{serial}.pmap", f"roman_wfi_{serial}.imap", [f"roman_wfi_dark_{serial}{n}.rmap"
                                                                             for n in (1, 2)]
    return {
        pmap: roman_mapping(pmap, f"{{\n    'WFI' : 'roman_wfi_{serial}0.imap',\n    'WFI' : '{imap}',\n}}"),
        # A pmap's and an imap's keys are folded to lower case: 'DARK' and 'dark' are one key.
        imap: roman_mapping(imap, f"{{\n    'DARK' : '{rmaps[0]}',\n    'dark' : '{rmaps[1]}',\n}}"),
        rmaps[1]: roman_mapping(rmaps[1], """Match({
    ('WFI01',) : UseAfter({
        '2020-01-01 00:00:00' : 'roman_wfi_dark_a.asdf',
        '2020-01-01 00:00:00' : 'roman_wfi_dark_b.asdf',
    }),
    (1,) : 'roman_wfi_dark_c.asdf',
    (1.0,) : 'roman_wfi_dark_d.asdf',
})"""),
    }


def refolded_key(serial: int) -> dict[str, str]:
    """{'WFI': a, 'wfi': b, 'WFI': c}: Python keeps WFI first (valued c), then folding lets wfi's b win."""
    pmap, imaps = f"roman_{serial}.pmap", [f"roman_wfi_{serial}{n}.imap" for n in (1, 2, 3)]
    rmap = f"roman_wfi_dark_{serial}.rmap"
    entries = "".join(f"    '{key}' : '{imap}',\n" for key, imap in zip(("WFI", "wfi", "WFI"), imaps, strict=True))
    files = {pmap: roman_mapping(pmap, "{\n" + entries + "}")}
    files[imaps[1]] = roman_mapping(imaps[1], f"{{\n    'DARK' : '{rmap}',\n}}")
    files[rmap] = roman_mapping(rmap, "Match({\n    ('WFI01',) : 'roman_wfi_dark_a.asdf',\n})")
    return files


def upper_case_sha1sum(serial: int) -> dict[str, str]:
    """The client reads header values in lower case, its sha1sum among them."""
    name = f"roman_wfi_dark_{serial}.rmap"
    text = roman_mapping(name, "Match({\n    ('WFI01',) : 'roman_wfi_dark_a.asdf',\n})")
    checksum = mapping.header_checksum(text)
    return {name: text.replace(checksum, checksum.upper())}


def docstring(serial: int) -> dict[str, str]:
    """The client's verifier lets a bare expression through, so a mapping may open with a docstring."""
    name = f"roman_wfi_dark_{serial}.rmap"
    text = roman_mapping(name, "Match({\n    ('WFI01',) : 'roman_wfi_dark_a.asdf',\n})")
    documented = '"""A dark mapping."""\n' + text
    return {name: documented.replace(mapping.header_checksum(text), mapping.header_checksum(documented))}


@pytest.mark.parametrize("serial, make", [(501, duplicate_keys), (502, upper_case_sha1sum), (503, docstring),
                                          (504, refolded_key)],
                         ids=["duplicate keys", "upper-case sha1sum", "docstring", "a key folded back"])
def test_we_name_exactly_the_files_the_crds_client_would(tmp_path, monkeypatch, serial, make):
    """What we plan from a mapping is what crds loads from it, checksums checked: no more, no less."""
    rmap_module = pytest.importorskip("crds.core.rmap", reason="the crds client is in the test extra")
    files = make(serial)
    folder = tmp_path / "mappings" / "roman"
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    monkeypatch.setenv("CRDS_PATH", str(tmp_path))
    monkeypatch.setenv("CRDS_READONLY_CACHE", "1")
    top = min(files, key=lambda name: ("pmap", "imap", "rmap").index(name.rsplit(".", 1)[1]))
    loaded = rmap_module.asmapping(str(folder / top), cached=False, ignore_checksum=False)

    ours: dict[str, mapping.Mapping] = {}
    todo = [top]
    while todo:
        name = todo.pop()
        ours[name] = mapping.parse(name, files[name], "roman")
        todo += [child for child in ours[name].children if ours[name].kind != "rmap" and child not in ours]
    references = {child for parsed in ours.values() if parsed.kind == "rmap" for child in parsed.children}
    assert set(ours) == set(loaded.mapping_names())
    assert references == set(loaded.reference_names())


@pytest.mark.parametrize("value", ["1", "T", "t", "True", "TRUE", "0", "f", "yes", "on", " 1", "", None])
def test_crds_ignore_mapping_checksum_is_read_as_the_client_reads_it(monkeypatch, value):
    """We skip the header check only when the client will: its own words for true, no others."""
    config = pytest.importorskip("crds.core.config", reason="the crds client is in the test extra")
    if value is None:
        monkeypatch.delenv("CRDS_IGNORE_MAPPING_CHECKSUM", raising=False)
    else:
        monkeypatch.setenv("CRDS_IGNORE_MAPPING_CHECKSUM", value)
    try:
        client_ignores = config.get_ignore_checksum()
    except ValueError:  # a value the client refuses: it never gets as far as skipping a check
        client_ignores = False
    assert crds_ignores_mapping_checksum() is client_ignores
