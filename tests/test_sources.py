"""Curation inputs: folders, globs, URI lists and manifests, with stable ids and labels."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avsync_ray.errors import InputError
from avsync_ray.sources import SkippedInput, list_inputs, list_sources, source_id_for

EXTENSIONS = [".mp4", ".mpg"]


@pytest.fixture()
def tree(tmp_path):
    for relative in ("dog_barking/a.mp4", "dog_barking/b.mp4", "lions roaring/a.mp4", "notes.txt", "nested/deep/c.mpg"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    return tmp_path


def test_folder_is_searched_recursively_with_parent_labels(tree):
    sources = list_sources(str(tree), EXTENSIONS)
    assert [s.uri for s in sources] == sorted(s.uri for s in sources) and len(sources) == 4
    assert {s.label for s in sources} == {"dog_barking", "lions roaring", "deep"}
    ids = [s.source_id for s in sources]
    assert len(set(ids)) == 4 and not any("." in i or "_" in i for i in ids)
    assert list_sources(str(tree), EXTENSIONS) == sources  # stable


def test_glob_and_uri_list(tree):
    assert [s.label for s in list_sources(str(tree / "dog_barking" / "*.mp4"), EXTENSIONS)] == ["dog_barking"] * 2
    both = list_sources([str(tree / "dog_barking" / "a.mp4"), f"file://{tree / 'nested' / 'deep' / 'c.mpg'}"], EXTENSIONS)
    assert len(both) == 2


def test_a_uri_list_comes_back_sorted_with_a_uri_listed_twice_once(tree):
    a, b = str(tree / "dog_barking" / "a.mp4"), str(tree / "dog_barking" / "b.mp4")
    assert [s.uri for s in list_sources([b, a, b], EXTENSIONS)] == [a, b]
    assert [s.uri for s in list_sources([a, b], EXTENSIONS)] == [a, b]  # already in order: kept as listed


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_manifests_give_labels_and_ids(tree, kind):
    rows = [{"uri": "dog_barking/a.mp4", "label": "dog barking", "id": "clip-1"}, {"uri": str(tree / "lions roaring" / "a.mp4"), "label": "lions", "id": None}]
    path = tree / f"manifest.{kind}"
    if kind == "csv":
        path.write_text("uri,label,id\n" + "\n".join(f"{r['uri']},{r['label']},{r['id'] or ''}" for r in rows) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    sources = {s.label: s for s in list_sources(str(path), EXTENSIONS)}
    assert sources["dog barking"].uri == str(tree / "dog_barking" / "a.mp4") and sources["dog barking"].source_id == "clip-1"
    assert sources["lions"].source_id == source_id_for(str(tree / "lions roaring" / "a.mp4"))


def test_manifest_without_uri_column_or_rows_is_an_error_naming_it(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\na.mp4,x\n")
    with pytest.raises(InputError, match="needs a 'uri' column.*columns are \\['path', 'label'\\]"):
        list_sources(str(tmp_path / "m.csv"), EXTENSIONS)
    (tmp_path / "header.csv").write_text("uri,label\n")
    with pytest.raises(InputError, match="lists no videos"):
        list_sources(str(tmp_path / "header.csv"), EXTENSIONS)


def test_a_missing_input_is_an_error_and_a_glob_may_match_nothing(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        list_sources(str(tmp_path / "nope"), EXTENSIONS)
    assert list_sources(str(tmp_path / "*.mp4"), EXTENSIONS) == []


def test_what_a_folder_holds_besides_videos_is_reported(tree):
    (tree / "folder.mp4").mkdir()
    (tree / "broken.mp4").symlink_to(tree / "nowhere.mp4")
    listing = list_inputs(str(tree), EXTENSIONS)
    assert set(listing.skipped) == {SkippedInput(str(tree / "notes.txt"), "not_a_video"), SkippedInput(str(tree / "folder.mp4"), "folder_with_video_suffix")}
    assert str(tree / "broken.mp4") in listing.sources["uri"].to_pylist()  # a broken link is a source: the ledger says not found


def test_an_object_store_listing_finds_the_same_without_per_object_details():
    import fsspec

    fs = fsspec.filesystem("memory")
    for relative in ("dog_barking/a.mp4", "notes.txt", "odd.mp4/inner.mp4", "nested/deep/c.mpg"):
        fs.pipe_file(f"/listing/{relative}", b"x")
    listing = list_inputs("memory://listing", EXTENSIONS)
    assert listing.sources["uri"].to_pylist() == [f"memory:///listing/{r}" for r in ("dog_barking/a.mp4", "nested/deep/c.mpg", "odd.mp4/inner.mp4")]
    assert set(listing.skipped) == {SkippedInput("memory:///listing/notes.txt", "not_a_video"), SkippedInput("memory:///listing/odd.mp4", "folder_with_video_suffix")}
    fs.rm("/listing", recursive=True)


def test_an_s3_listing_is_read_page_by_page_into_the_same_sources(s3_server, s3_proxy, monkeypatch):
    """The input listing streams the listing's pages into Arrow columns (here 2 keys a page): the same sources,
    ids, labels and skipped entries as one listing of everything, one LIST request per page."""
    import fsspec

    from avsync_ray import storage

    root = f"{s3_server}/paged"
    relative = ["dog_barking/a.mp4", "dog_barking/b.mp4", "cat/c.mp4", "notes.txt", "odd.mp4/inner.mp4", "nested/deep/d.mpg"]
    fsspec.filesystem("s3").pipe({f"{root}/{r}".removeprefix("s3://"): b"x" for r in relative})
    whole = list_inputs(root, EXTENSIONS)
    monkeypatch.setattr(storage, "LIST_PAGE", 2)
    s3_proxy.reset()
    paged = list_inputs(root, EXTENSIONS)
    assert s3_proxy.counts["LIST"] == 1 + 3  # whether the input is a folder, then six keys, two a page
    assert paged.sources.equals(whole.sources) and paged.skipped == whole.skipped
    assert paged.sources.to_pylist() == [
        {"uri": f"{root}/{r}", "source_id": source_id_for(r), "label": r.split("/")[-2]}
        for r in sorted(r for r in relative if not r.endswith(".txt"))
    ]
    assert paged.skipped == [SkippedInput(f"{root}/notes.txt", "not_a_video"), SkippedInput(f"{root}/odd.mp4", "folder_with_video_suffix")]
