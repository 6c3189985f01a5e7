"""The storage helpers on a real S3 API (moto behind the counting proxy): one PUT per whole-object write, nothing
visible from a failed write, listings that see what other processes wrote, throttling retried, and a clear
error once the retries are spent."""

from __future__ import annotations

import errno

import fsspec
import pytest

from avsync_ray.storage import StorageError, is_transient, list_files, open_atomic, read_ranges, retry_storage, write_bytes_atomic


def test_a_whole_object_write_is_one_put(s3_server, s3_proxy):
    write_bytes_atomic(f"{s3_server}/storage/one.bin", b"x" * 1000)
    assert dict(s3_proxy.counts) == {"PUT": 1}  # no temporary name, listing, copy or delete
    s3_proxy.reset()
    with open_atomic(f"{s3_server}/storage/streamed.bin") as handle:
        handle.write(b"y" * 3000)
    assert dict(s3_proxy.counts) == {"PUT": 1}
    assert read_ranges([f"{s3_server}/storage/streamed.bin"], [10], [15]) == [b"yyyyy"]


def test_a_failed_streamed_write_leaves_nothing(s3_server):
    with pytest.raises(RuntimeError), open_atomic(f"{s3_server}/storage/failed.bin") as handle:
        handle.write(b"partial")
        raise RuntimeError("the producer died")
    assert not fsspec.filesystem("s3").exists(f"{s3_server}/storage/failed.bin")


def test_listings_see_what_other_processes_wrote(s3_server):
    folder = f"{s3_server}/storage/listed"
    write_bytes_atomic(f"{folder}/a.bin", b"a")
    assert list_files(folder) == [f"{folder}/a.bin"]
    other = fsspec.filesystem("s3", skip_instance_cache=True)  # another process's client
    other.pipe_file(f"{folder}/b.bin", b"b")
    assert list_files(folder) == [f"{folder}/a.bin", f"{folder}/b.bin"]


def test_throttled_and_dropped_requests_are_retried(s3_server, s3_proxy):
    s3_proxy.slowdown_share, s3_proxy.reset_share = 0.3, 0.05
    for index in range(12):
        write_bytes_atomic(f"{s3_server}/storage/throttled/{index}.bin", bytes([index]))
    assert s3_proxy.throttled > 0
    s3_proxy.reset()
    assert read_ranges([f"{s3_server}/storage/throttled/{i}.bin" for i in range(12)], [0] * 12, [1] * 12) == [bytes([i]) for i in range(12)]


def test_retry_gives_up_with_a_storage_error_and_lets_other_errors_through():
    calls = []

    def busy():
        calls.append(1)
        raise OSError(errno.EBUSY, "Please reduce your request rate.")

    with pytest.raises(StorageError, match=r"writing s3://b/x: .*reduce your request rate.*after 3 attempts"):
        retry_storage(busy, "writing s3://b/x", attempts=3, backoff_s=0.0)
    assert len(calls) == 3 and is_transient(StorageError("x"))
    with pytest.raises(FileNotFoundError):
        retry_storage(lambda: (_ for _ in ()).throw(FileNotFoundError("gone")), "reading", attempts=3, backoff_s=0.0)
    assert not is_transient(PermissionError("denied")) and is_transient(ConnectionResetError("Connection reset by peer"))


def test_an_s3_folder_is_removed_a_listing_page_at_a_time(s3_server, s3_proxy, monkeypatch):
    from avsync_ray import storage

    fs = fsspec.filesystem("s3")
    fs.pipe({f"{s3_server}/storage/gone/{k:02d}/v.tar".removeprefix("s3://"): b"x" for k in range(5)})
    fs.pipe_file(f"{s3_server}/storage/gone-not/kept.tar".removeprefix("s3://"), b"x")  # a sibling sharing the prefix stays
    monkeypatch.setattr(storage, "LIST_PAGE", 2)
    s3_proxy.reset()
    storage.remove(f"{s3_server}/storage/gone", recursive=True)
    assert s3_proxy.counts["LIST"] == 3 and s3_proxy.counts["POST"] == 3  # a page listed, then its keys deleted in one request
    fs.invalidate_cache()
    assert not fs.exists(f"{s3_server}/storage/gone") and fs.exists(f"{s3_server}/storage/gone-not/kept.tar")
