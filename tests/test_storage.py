"""Whole-object writes and folder deletion, on local disk and on the emulated bucket."""

from apache_beam.io.filesystems import FileSystems

from transforms.storage import delete_tree, write_bytes


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
