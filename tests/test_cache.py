"""The cache's write protocol: temp file as lock, atomic commit, stale temps, links refused."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys

import pytest
from conftest import CANNOT_RESERVE, can_reserve, needs_tmpfs

from crds_job import cache as cache_module
from crds_job.cache import Cache, Claim, file_id, temp_path
from crds_job.errors import CacheError
from crds_job.plan import Entry

REF = Entry(name="roman_wfi_dark_0001.asdf", kind="reference", size=3, sha1="", instrument="wfi")


def test_layouts(tmp_path):
    flat = Cache(str(tmp_path), "roman", "flat")
    assert flat.relpath(REF) == "references/roman/roman_wfi_dark_0001.asdf"
    assert Cache(str(tmp_path), "roman", "instrument").relpath(REF) == "references/roman/wfi/roman_wfi_dark_0001.asdf"
    pmap = Entry(name="roman_0001.pmap", kind="pmap", size=1, sha1="")
    assert flat.relpath(pmap) == "mappings/roman/roman_0001.pmap"
    assert flat.config_path("server_config") == str(tmp_path / "config/roman/server_config")


def test_a_folder_outside_the_cache_is_refused_before_it_is_made(tmp_path):
    """Names are checked before they become paths; this is the last guard, and it creates nothing."""
    cache = Cache(str(tmp_path / "cache"), "roman", "instrument")
    with pytest.raises(CacheError, match="is outside the cache"):
        cache.ensure_folder(str(tmp_path / "cache" / "references" / ".." / ".." / "outside"))
    assert not (tmp_path / "outside").exists()
    cache.ensure_folder(str(tmp_path / "cache" / "references" / "roman" / "wfi"))
    assert (tmp_path / "cache" / "references" / "roman" / "wfi").is_dir()


def test_open_keeps_an_existing_layout_and_refuses_a_clash(tmp_path):
    assert Cache.open(str(tmp_path), "roman", None).mode == "flat"
    (tmp_path / "config/roman").mkdir(parents=True)
    (tmp_path / "config/roman/ref_cache_subdir_mode").write_text("instrument\n")
    assert Cache.open(str(tmp_path), "roman", None).mode == "instrument"
    with pytest.raises(CacheError, match="organised 'instrument', but 'flat'"):
        Cache.open(str(tmp_path), "roman", "flat")
    (tmp_path / "config/roman/ref_cache_subdir_mode").write_text("legacy")
    with pytest.raises(CacheError, match="cannot fill"):
        Cache.open(str(tmp_path), "roman", None)


def test_the_first_warm_to_settle_a_new_caches_layout_decides_it(tmp_path):
    """Two first warms opened the empty cache, each in the layout it asked for: only one layout stays."""
    root = str(tmp_path / "cache")
    instrument, flat, either = (Cache.open(root, "roman", mode) for mode in ("instrument", "flat", None))
    assert (instrument.mode, flat.mode, either.mode) == ("instrument", "flat", "flat")
    assert asyncio.run(instrument.settle_layout("instrument", lambda path, data: True)).mode == "instrument"
    assert (tmp_path / "cache/config/roman/ref_cache_subdir_mode").read_text() == "instrument"
    with pytest.raises(CacheError, match="organised 'instrument', but 'flat' was asked for"):
        asyncio.run(flat.settle_layout("flat", lambda path, data: True))
    assert asyncio.run(either.settle_layout(None, lambda path, data: False)).mode == "instrument", "adopted"
    assert (tmp_path / "cache/config/roman/ref_cache_subdir_mode").read_text() == "instrument"
    assert not [name for name in os.listdir(tmp_path / "cache/config/roman") if name.startswith(".")]


def test_a_held_claim_excludes_other_writers_and_commit_is_atomic(tmp_path):
    c = Cache(str(tmp_path), "roman", "flat")
    final = c.path(REF)
    claim = asyncio.run(c.claim(final))
    assert cache_module._try_lock(final) is None, "a second writer must wait"
    os.write(claim.fd, b"abc")
    assert not os.path.exists(final), "nothing at the final name before the commit"
    claim.commit(fsync=True)
    assert open(final, "rb").read() == b"abc" and not os.path.exists(temp_path(final))
    claim.release()  # a no-op after commit: the descriptor is never closed twice
    again = cache_module._try_lock(final)
    assert again is not None
    again.release()
    assert not os.path.exists(temp_path(final))


def test_a_writer_waiting_for_another_says_so_once(tmp_path):
    """Behind a stopped writer (SIGSTOP, a frozen node) the wait has no end: the log says why."""
    c = Cache(str(tmp_path), "roman", "flat")
    final = c.path(REF)
    held = asyncio.run(c.claim(final))
    said: list[str] = []

    async def wait_then_free() -> Claim:
        waiter = asyncio.ensure_future(c.claim(final, poll=0.01, waiting=lambda: said.append("waiting"),
                                               patience=0.05))
        await asyncio.sleep(0.3)
        assert not waiter.done()
        held.release()
        return await waiter

    asyncio.run(wait_then_free()).release()
    assert said == ["waiting"]


@pytest.mark.parametrize("flush_early", [False, True])
def test_append_writes_chunks_in_order_whether_or_not_writeback_starts_early(tmp_path, flush_early):
    c = Cache(str(tmp_path), "roman", "flat")
    claim = asyncio.run(c.claim(c.path(REF)))
    parts = [[b"a" * 70_000, b"", b"b"], [memoryview(b"cd")], [os.urandom(1 << 20)]]
    for chunks in parts:
        claim.append(chunks, flush_early=flush_early)
    claim.commit(fsync=flush_early)
    assert open(c.path(REF), "rb").read() == b"".join(bytes(chunk) for chunks in parts for chunk in chunks)


def test_reserve_takes_a_files_blocks_but_its_size_stays_what_was_written(tmp_path):
    if not can_reserve(tmp_path):
        pytest.skip(CANNOT_RESERVE)
    c = Cache(str(tmp_path), "roman", "flat")
    claim = asyncio.run(c.claim(c.path(REF)))
    claim.reserve(5 * 2**20)
    info = os.fstat(claim.fd)
    assert info.st_blocks * 512 >= 5 * 2**20, "the blocks are taken before the bytes are written"
    assert info.st_size == 0
    claim.append([b"abc"], flush_early=True)
    assert os.fstat(claim.fd).st_size == 3, "the size check reads what was written, not what was reserved"
    claim.release()


RESERVE_ON = """
import asyncio, errno, sys
from crds_job.cache import Cache
from crds_job.plan import Entry
cache = Cache(sys.argv[1], "roman", "flat")
claim = asyncio.run(cache.claim(cache.path(Entry("roman_wfi_dark_0001.asdf", "reference", 3, "", "wfi"))))
try:
    claim.reserve(4 * 2**20)
except OSError as exc:
    print(errno.errorcode[exc.errno])
"""


@needs_tmpfs
@pytest.mark.skipif(cache_module._FALLOCATE is None, reason="this platform's C library has no fallocate")
def test_reserving_more_than_the_disk_holds_fails_before_any_byte_is_written(tmp_path):
    script = f"mount -t tmpfs -o size=1m tmpfs '{tmp_path}' && exec '{sys.executable}' -c '{RESERVE_ON}' '{tmp_path}'"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [errno.errorcode[errno.ENOSPC]]


def test_sweep_removes_dead_writers_temps_but_not_live_ones(tmp_path):
    c = Cache(str(tmp_path), "roman", "flat")
    folder = tmp_path / "references/roman"
    folder.mkdir(parents=True)
    dead = folder / ".dead.asdf.crds-job.part"
    dead.write_bytes(b"partial")
    other = tmp_path / "references/hst/acs"  # a killed warm of another observatory, on a shared volume
    other.mkdir(parents=True)
    (other / ".x_drk.fits.crds-job.part").write_bytes(b"partial")
    live = asyncio.run(c.claim(str(folder / "live.asdf")))
    assert c.sweep() == 2
    assert not dead.exists() and os.path.exists(live.temp) and not os.listdir(other)
    live.release()


def test_links_in_the_cache_are_refused(tmp_path):
    c = Cache(str(tmp_path / "cache"), "roman", "flat")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "cache/references").mkdir(parents=True)
    os.symlink(outside, tmp_path / "cache/references/roman")
    with pytest.raises(CacheError, match="leads outside the cache"):
        c.ensure_folder(c.folder("references"))
    os.unlink(tmp_path / "cache/references/roman")
    folder = tmp_path / "cache/references/roman"
    folder.mkdir()
    os.symlink(outside / "target", folder / REF.name)
    with pytest.raises(CacheError, match="is a symbolic link"):
        c.present_size(c.path(REF))
    os.symlink(outside / "target", temp_path(c.path(REF)))
    with pytest.raises(CacheError, match="is a symbolic link"):
        cache_module._try_lock(c.path(REF))
    assert not (outside / "target").exists(), "nothing was written through a link"


def test_write_now_and_space_check(tmp_path):
    c = Cache(str(tmp_path / "new" / "cache"), "roman", "flat")
    assert c.writable()
    path = c.config_path("server_config")
    assert c.write_now(path, b"{}", fsync=False) and open(path, "rb").read() == b"{}"
    c.check_space(1)
    with pytest.raises(cache_module.DiskFullError, match="short by"):
        c.check_space(2**62)


def test_holds_keeps_a_replacement_of_the_corrupt_copy_but_not_the_copy_itself(tmp_path):
    c = Cache(str(tmp_path), "roman", "flat")
    path = c.path(REF)
    assert not c.holds(path, 3), "absent"
    c.write_now(path, b"bad", fsync=False)
    corrupt = file_id(os.lstat(path))
    assert c.holds(path, 3) and not c.holds(path, 4)
    assert not c.holds(path, 3, stale=corrupt), "the copy found corrupt is to be replaced"
    c.write_now(path, b"abc", fsync=False)  # as another writer does: a verified file, renamed over it
    assert c.holds(path, 3, stale=corrupt), "its replacement is kept"
