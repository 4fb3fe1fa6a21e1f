"""Fuzzing the parsers of untrusted input: they answer with a result or their own error, nothing else.

Bounded and reproducible in the suite (300 examples each, derandomized);
``HYPOTHESIS_PROFILE=fuzz ./scripts/test tests/test_fuzz.py`` runs a long random campaign.
"""

from __future__ import annotations

import string

from hypothesis import event, given
from hypothesis import strategies as st

from crds_job import environments, mapping, names, server_config, settings
from crds_job.errors import BucketContentError, UsageError
from crds_job.sample.context import crds_encode, render_mapping

HOSTILE = ["../x.fits", "/etc/passwd", "a/b.fits", ".hidden.fits", "x\x00.fits", "x\n.fits", "caf\u00e9.fits",
           "..", "", "N/A", "OMIT", "a" * 300, "x.rmap", "x.imap", "x.pmap", "\u202ex.fits", "C:\\x.fits"]
file_names = st.one_of(
    st.sampled_from(HOSTILE),
    st.from_regex(r"[a-z0-9][a-z0-9_]{0,20}\.(fits|asdf|r4h|rmap)", fullmatch=True),
    st.text(max_size=30),
)
selector_values = st.recursive(
    file_names,
    lambda children: st.one_of(
        st.dictionaries(st.tuples(st.text(max_size=8)), children, max_size=4).map(
            lambda d: ("dict", d)),
        st.tuples(st.sampled_from(["Match", "UseAfter", "Bracket", "open", "eval"]),
                  st.dictionaries(st.text(max_size=8), children, max_size=3)),
        st.lists(children, max_size=3).map(tuple),
    ),
    max_leaves=12,
)


def as_source(value) -> str:
    """Render a generated selector value as mapping source text."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "dict":
        return "{" + ", ".join(f"{k!r}: {as_source(v)}" for k, v in value[1].items()) + "}"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], dict):
        body = "{" + ", ".join(f"{k!r}: {as_source(v)}" for k, v in value[1].items()) + "}"
        return f"{value[0]}({body})"
    return "(" + "".join(as_source(v) + ", " for v in value) + ")"


HEADER = {"mapping": "REFERENCE", "observatory": "HST", "instrument": "ACS", "filekind": "BIASFILE",
          "name": "hst_acs_biasfile_0001.rmap", "derived_from": "fuzz", "parkey": (("DETECTOR",),)}


@given(selector_values)
def test_mapping_parser_names_only_safe_references_or_refuses(value):
    text = render_mapping(HEADER, as_source(value))
    try:
        parsed = mapping.parse("hst_acs_biasfile_0001.rmap", text, "hst")
    except mapping.MappingError:
        event("refused")
        return
    event("accepted with children" if parsed.children else "accepted, names nothing")
    for child in parsed.children:
        assert names.check_name(child) == child
        assert names.kind_of(child) == "reference"
        assert "/" not in child and not child.startswith(".") and child.isascii()


@given(st.text(max_size=400))
def test_mapping_parser_on_arbitrary_text(text):
    try:
        mapping.parse("hst_acs_biasfile_0001.rmap", text, "hst")
    except mapping.MappingError:
        pass


@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_server_config_parser_on_arbitrary_bytes(data):
    try:
        parsed = server_config.parse(data, "roman")
    except BucketContentError:
        return
    assert isinstance(parsed.metadata, dict)


METADATA_ENTRY = st.fixed_dictionaries({
    "size": st.one_of(st.integers(), st.text(max_size=5)),
    "sha1sum": st.text(alphabet="0123456789abcdefz", max_size=41),
})


@given(st.dictionaries(file_names, METADATA_ENTRY, max_size=5))
def test_server_config_metadata_is_validated_entry_by_entry(metadata):
    data = repr({"observatory": "roman", "download_metadata": crds_encode(metadata)}).encode()
    try:
        parsed = server_config.parse(data, "roman")
    except BucketContentError:
        return
    for info in parsed.metadata.values():
        assert info.size >= 0 and (info.sha1 == "" or len(info.sha1) == 40)


@given(st.text(max_size=60))
def test_name_check_accepts_only_plain_base_names(name):
    try:
        checked = names.check_name(name)
    except names.UnsafeName:
        return
    assert checked == name and set(name) <= set(string.ascii_letters + string.digits + "_.+-")
    assert not name.startswith(".") and ".." not in name and len(name) <= 200


FLAGS = [option.flag for option in settings.OPTIONS] + ["--no-fsync", "--", "roman", "hst", "jwst", "ops", "test",
                                                         "int", "strun", "-x", "--context=roman_0001.pmap"]
tokens = st.one_of(st.sampled_from(FLAGS), st.text(max_size=12).filter(lambda t: t not in ("-h", "--help")))
twins = st.dictionaries(st.sampled_from([o.env for o in settings.OPTIONS] + [settings.OBSERVATORY_ENV,
                                                                             settings.ENVIRONMENT_ENV, "CRDS_PATH"]),
                        st.one_of(st.sampled_from(["", "1", "roman", "ops", "hst", "0", "8MiB", "json", "flat"]),
                                  st.text(max_size=10)), max_size=6)


@given(st.lists(tokens, max_size=8), twins)
def test_settings_parser_gives_settings_or_a_usage_error(argv, environ):
    try:
        parsed = settings.parse(argv, environ)
    except UsageError as error:
        assert error.exit_code == 64 and str(error)
        event("usage error")
        return
    event("settings")
    assert parsed.observatory in environments.ENVIRONMENTS
    assert parsed.environment in environments.ENVIRONMENTS[parsed.observatory]
    assert parsed.concurrency > 0 and parsed.part_size > 0 and parsed.retries > 0
    assert parsed.log_format in ("json", "console")


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), file_names),
                           lambda children: st.one_of(st.lists(children, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), children, max_size=3)),
                           max_leaves=10)


@given(st.dictionaries(st.one_of(st.sampled_from(["acs", "wfc3", "ACS", "../x", ""]), st.text(max_size=8)),
                       st.one_of(st.lists(file_names, max_size=4), json_values), max_size=4))
def test_crds_listing_of_a_pickle_plans_safe_names_or_is_refused(listing):
    """What the crds child answers for a pickle is untrusted: a plan of planned names, or our own error."""
    from crds_job import plan

    known = {name: server_config.FileInfo(size=1, sha1="") for group in listing.values()
             if isinstance(group, list) for name in group if isinstance(name, str)}
    pickle = plan.Entry("hst_0001.pmap.pkl", "pickle", 1, "")
    try:
        planned = plan.from_listing("hst_0001.pmap", pickle, listing, known)
    except (BucketContentError, UsageError):
        event("refused")
        return
    assert all(mapping.INSTRUMENT.match(entry.instrument) for entry in planned.references)
    assert {entry.name for entry in planned.references} <= set(known) | {
        n for n in (names.geis_partner(e) for e in known) if n}
