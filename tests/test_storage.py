"""Whole-object writes and folder deletion, on local disk and on the emulated bucket."""

from apache_beam.io.filesystems import FileSystems

from transforms.storage import delete_tree, publish_tree, read_json, write_bytes, write_json


def listing(root: str) -> list[str]:
    (matched,) = FileSystems.match([f"{root}/**"])
    return sorted(m.path[len(root) + 1 :] for m in matched.metadata_list)


def check_delete_tree(root: str) -> None:
    for name in ("out/tmp/tft/a", "out/tmp/b", "out/tmpfile", "out/transform/x"):
        write_bytes(f"{root}/{name}", b"x")
    delete_tree(f"{root}/out/tmp")
    assert listing(root) == ["out/tmpfile", "out/transform/x"]  # a mere name prefix stays
    delete_tree(f"{root}/out/tmp")  # gone already: nothing to do, no error
    assert listing(root) == ["out/tmpfile", "out/transform/x"]


def test_delete_tree_on_local_disk(tmp_path):
    check_delete_tree(str(tmp_path))


def test_delete_tree_on_the_bucket(gcs):
    # On GCS no object is named like the folder, so exists() is false for it; the objects
    # under it must go all the same.
    check_delete_tree(f"{gcs}/t")


def check_json(root: str) -> None:
    uri = f"{root}/runs/r1/run.json"
    assert read_json(uri) is None  # nothing there yet
    write_json(uri, {"done": {"ingest": 1, "train": 2}, "b": [1]})
    assert read_json(uri) == {"b": [1], "done": {"ingest": 1, "train": 2}}
    with FileSystems.open(uri) as fh:
        assert fh.read() == b'{\n  "b": [\n    1\n  ],\n  "done": {\n    "ingest": 1,\n' + (
            b'    "train": 2\n  }\n}\n'
        )
    # A run record keeps its stages in the order they ran.
    write_json(uri, {"done": {"train": 2, "ingest": 1}}, sort_keys=False)
    assert list(read_json(uri)["done"]) == ["train", "ingest"]
    assert listing(root) == ["runs/r1/run.json"]  # no temporary file left beside it


def test_json_on_local_disk(tmp_path):
    check_json(str(tmp_path))


def test_json_on_the_bucket(gcs):
    check_json(f"{gcs}/json")


def check_publish_tree(root: str, local) -> None:
    (local / "a" / "b").mkdir(parents=True)
    (local / "a" / "b" / "x.pb").write_bytes(b"new x")
    (local / "y").write_bytes(b"new y")
    write_bytes(f"{root}/graph/a/b/x.pb", b"old x")
    write_bytes(f"{root}/graph/old", b"an older version's file")
    write_bytes(f"{root}/graphs/other", b"a mere name prefix")
    for _ in range(2):  # a retry publishes it all again
        publish_tree(str(local), f"{root}/graph")
        assert listing(root) == ["graph/a/b/x.pb", "graph/y", "graphs/other"]
    with FileSystems.open(f"{root}/graph/a/b/x.pb") as fh:
        assert fh.read() == b"new x"


def test_publish_tree_on_local_disk(tmp_path):
    (tmp_path / "out").mkdir()
    check_publish_tree(str(tmp_path / "out"), tmp_path / "local")


def test_publish_tree_on_the_bucket(gcs, tmp_path):
    check_publish_tree(f"{gcs}/p", tmp_path)
