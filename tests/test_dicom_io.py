"""The reading layer on real files: pydicom's own test files and generated archives."""

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import apache_beam as beam
import pydicom
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from pydicom.data import get_testdata_file, get_testdata_files

from models import features as f
from transforms import dicom_io
from transforms.deadletter import DeadLetter, StageError
from transforms.dicom_io import SourceObject

CT = Path(get_testdata_file("CT_small.dcm"))
J2K = Path(get_testdata_file("JPEG2000.dcm"))


def objects_in(path: Path, max_bytes: int = dicom_io.DEFAULT_MAX_OBJECT_BYTES) -> list:
    return list(dicom_io.iter_objects(str(path), path.stat().st_size, max_bytes))


def dead(items: list) -> list[DeadLetter]:
    return [i for i in items if isinstance(i, DeadLetter)]


def good(items: list) -> list[SourceObject]:
    return [i for i in items if isinstance(i, SourceObject)]


# --- sniffing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"", dicom_io.KIND_EMPTY),
        (b"\0" * 128 + b"DICM" + b"\0" * 8, dicom_io.KIND_DICOM),
        (b"PK\x03\x04rest", dicom_io.KIND_ZIP),
        (gzip.compress(b"x", mtime=0), dicom_io.KIND_GZIP),  # fixed id for pytest-xdist
        (b"BZh91AY", dicom_io.KIND_TAR),
        (b"Hello, this is a README file\n", dicom_io.KIND_UNKNOWN),
        # (0008,0005) CS, explicit VR little endian, no preamble
        (b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100", dicom_io.KIND_DICOM),
        # (0008,0005) CS, explicit VR big endian, no preamble
        (b"\x00\x08\x00\x05CS\x00\x0aISO_IR 100", dicom_io.KIND_DICOM),
        # (0008,0016) implicit VR little endian: 4-byte length
        (b"\x08\x00\x16\x00\x1a\x00\x00\x001.2.840.10008.5.1.4.1.1.2", dicom_io.KIND_DICOM),
    ],
)
def test_sniff_recognises_content_not_names(head, kind):
    assert dicom_io.sniff(head) == kind


def test_sniff_recognises_a_plain_tar():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("a")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    assert dicom_io.sniff(buf.getvalue()[:512]) == dicom_io.KIND_TAR


# --- objects and archives ----------------------------------------------------------------


def test_loose_dicom_without_extension_is_read(tmp_path):
    path = tmp_path / "IMG0001"
    path.write_bytes(CT.read_bytes())
    (obj,) = objects_in(path)
    assert obj == SourceObject(str(path), None, CT.read_bytes())


def test_empty_and_junk_objects_are_dead_letters(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("patient list attached\n")
    (empty,) = objects_in(tmp_path / "empty")
    (junk,) = objects_in(tmp_path / "notes.txt")
    assert (empty.stage, empty.error_type) == ("read", "empty")
    assert (junk.stage, junk.error_type, junk.member) == ("read", "not_dicom", None)


def test_zip_members_are_read_one_by_one(tmp_path):
    path = tmp_path / "study.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("S1/", b"")  # a folder entry is not an object
        zf.write(CT, "S1/IMG1")
        zf.write(J2K, "S1/IMG2.dcm")
        zf.writestr("S1/notes.txt", "not an image")
        zf.writestr("S1/empty.dcm", b"")
    items = objects_in(path)
    assert [(o.member, o.data) for o in good(items)] == [
        ("S1/IMG1", CT.read_bytes()),
        ("S1/IMG2.dcm", J2K.read_bytes()),
    ]
    assert {(d.member, d.error_type) for d in dead(items)} == {
        ("S1/notes.txt", "not_dicom"),
        ("S1/empty.dcm", "empty"),
    }
    assert all(i.source == str(path) for i in items)


def test_corrupt_zip_member_is_one_row_and_the_rest_survive(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(CT, "a.dcm")
        zf.write(CT, "b.dcm")
    data = bytearray(buf.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("b.dcm")
    start = info.header_offset + 30 + len("b.dcm")
    data[start + 100 : start + 140] = b"\xff" * 40  # damage b.dcm's compressed bytes
    path = tmp_path / "broken.zip"
    path.write_bytes(bytes(data))
    items = objects_in(path)
    assert [o.member for o in good(items)] == ["a.dcm"]
    (row,) = dead(items)
    assert (row.member, row.stage, row.error_type) == ("b.dcm", "read", "corrupt_archive_member")


def test_zip_with_unreadable_directory_is_one_row(tmp_path):
    path = tmp_path / "bad.zip"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 200)
    (row,) = objects_in(path)
    assert (row.member, row.error_type) == (None, "corrupt_archive")


def test_encrypted_zip_member_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("secret.dcm", CT.read_bytes())
    data = bytearray(buf.getvalue())
    # Set the "encrypted" flag bit as an encrypting zip tool does, in the local header
    # and in the central directory entry.
    data[6] |= 0x1
    data[data.index(b"PK\x01\x02") + 8] |= 0x1
    path = tmp_path / "locked.zip"
    path.write_bytes(bytes(data))
    (row,) = objects_in(path)
    assert (row.member, row.error_type) == ("secret.dcm", "encrypted_member")


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_tar_gz_is_streamed(tmp_path):
    path = tmp_path / "study.tgz"
    path.write_bytes(_tar_gz({"a/IMG1": CT.read_bytes(), "a/IMG2": J2K.read_bytes()}))
    assert [(o.member, o.data) for o in objects_in(path)] == [
        ("a/IMG1", CT.read_bytes()),
        ("a/IMG2", J2K.read_bytes()),
    ]


def test_truncated_tar_gz_keeps_what_came_before_and_says_so(tmp_path):
    big = os.urandom(200_000)  # incompressible: the cut lands inside this member
    data = _tar_gz({"IMG1": CT.read_bytes(), "junk.bin": big, "IMG3": CT.read_bytes()})
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(data[: len(data) // 2])
    items = objects_in(path)
    assert [o.member for o in good(items)] == ["IMG1"]
    junk, cut = dead(items)
    assert (junk.member, junk.error_type) == ("junk.bin", "not_dicom")
    # IMG3 is beyond the cut: nobody can know it was there, one row stands for the rest.
    assert (cut.member, cut.error_type) == (None, "corrupt_archive")
    assert "after 2 members" in cut.message


def test_an_error_inside_one_zip_member_costs_only_that_member(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_LZMA) as zf:
        for name in ("a.dcm", "b.dcm", "c.dcm"):
            zf.write(CT, name)
    data = bytearray(buf.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("b.dcm")
    start = info.header_offset + 30 + len("b.dcm")
    data[start + 40 : start + 400] = os.urandom(360)  # LZMA raises LZMAError, not zlib.error
    path = tmp_path / "lzma.zip"
    path.write_bytes(bytes(data))
    items = objects_in(path)
    assert [o.member for o in good(items)] == ["a.dcm", "c.dcm"]
    assert [(d.member, d.error_type) for d in dead(items)] == [("b.dcm", "corrupt_archive_member")]


def test_empty_archives_still_get_a_row(tmp_path):
    empty_zip = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty_zip, "w") as zf:
        zf.writestr("folder/", b"")
    only_dirs = tmp_path / "dirs.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("folder")
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
    only_dirs.write_bytes(buf.getvalue())
    for path in (empty_zip, only_dirs):
        (row,) = objects_in(path)
        assert (row.member, row.error_type) == (None, "empty_archive")


def test_tar_links_are_refused_not_skipped(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("a.dcm")
        info.size = CT.stat().st_size
        tf.addfile(info, io.BytesIO(CT.read_bytes()))
        for name, kind in (("b.dcm", tarfile.LNKTYPE), ("c.dcm", tarfile.SYMTYPE)):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = kind, "a.dcm"
            tf.addfile(link)
    path = tmp_path / "links.tar.gz"
    path.write_bytes(buf.getvalue())
    items = objects_in(path)
    assert [o.member for o in good(items)] == ["a.dcm"]
    assert [(d.member, d.error_type) for d in dead(items)] == [
        ("b.dcm", "unsupported_member"),
        ("c.dcm", "unsupported_member"),
    ]


def test_gzip_of_a_single_dicom(tmp_path):
    path = tmp_path / "IMG1.dcm.gz"
    path.write_bytes(gzip.compress(CT.read_bytes()))
    (obj,) = objects_in(path)
    assert (obj.member, obj.data) == ("IMG1.dcm", CT.read_bytes())


def test_archive_inside_an_archive_is_expanded(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.write(CT, "IMG1")
    path = tmp_path / "outer.tar.gz"
    path.write_bytes(_tar_gz({"disc/study.zip": inner.getvalue()}))
    (obj,) = objects_in(path)
    assert obj.member == "disc/study.zip!/IMG1"
    assert obj.data == CT.read_bytes()


def test_size_cap_gives_a_row_for_loose_objects_and_members(tmp_path):
    loose = tmp_path / "big.dcm"
    loose.write_bytes(CT.read_bytes())
    zipped = tmp_path / "big.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(CT, "IMG1")
        zf.writestr("tiny.dcm", CT.read_bytes()[:1000])
    cap = 5000
    (row,) = objects_in(loose, cap)
    assert row.error_type == "too_large"
    items = objects_in(zipped, cap)
    assert [d.member for d in dead(items) if d.error_type == "too_large"] == ["IMG1"]
    assert [o.member for o in good(items)] == ["tiny.dcm"]


def test_read_fn_routes_dead_letters_and_survives_a_vanished_object(tmp_path):
    fn = dicom_io.ReadObjectsFn(dicom_io.DEFAULT_MAX_OBJECT_BYTES)
    (tmp_path / "a.dcm").write_bytes(CT.read_bytes())
    ok = list(fn.process((str(tmp_path / "a.dcm"), CT.stat().st_size)))
    assert [o.member for o in ok] == [None]
    (gone,) = list(fn.process((str(tmp_path / "deleted-since-listing.dcm"), 10)))
    assert gone.tag == "dead_letter"
    assert (gone.value.stage, gone.value.error_type) == ("read", "read_failed")


# --- parsing -----------------------------------------------------------------------------


def test_parse_accepts_every_readable_pydicom_test_file():
    """pydicom's own corpus: everything DICOM parses, and its truncated files are caught."""
    outcomes: dict[str, str] = {}
    root = CT.parent
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        for item in objects_in(path):
            if isinstance(item, DeadLetter):
                outcomes[path.name] = item.error_type
                continue
            try:
                dicom_io.parse_dataset(item.data)
                outcomes[path.name] = "ok"
            except StageError as e:
                outcomes[path.name] = e.error_type
    assert outcomes["MR_truncated.dcm"] == "truncated"
    assert outcomes["rtplan_truncated.dcm"] == "truncated"
    assert outcomes["ExplVR_BigEndNoMeta.dcm"] == "ok"  # no preamble, big endian
    assert outcomes["README.txt"] == "not_dicom"
    dicom_files = [n for n in outcomes if n.endswith(".dcm") and "truncated" not in n]
    failed = sorted(n for n in dicom_files if outcomes[n] != "ok")
    assert failed == ["no_meta.dcm"]  # its first byte is garbage; pydicom reads nothing either
    assert sum(v == "ok" for v in outcomes.values()) >= 160


@pytest.mark.parametrize("cut", [200, 1000, 5000, 20000, 39000])
def test_parse_catches_truncation_anywhere(cut):
    data = CT.read_bytes()
    with pytest.raises(StageError) as info:
        dicom_io.parse_dataset(data[:cut])
    assert info.value.error_type == "truncated"


def test_parse_catches_truncated_encapsulated_pixel_data():
    data = J2K.read_bytes()
    with pytest.raises(StageError) as info:
        dicom_io.parse_dataset(data[:-100])
    assert info.value.error_type == "truncated"


def test_parse_catches_truncated_deflated_dataset():
    data = Path(get_testdata_file("image_dfl.dcm")).read_bytes()
    dicom_io.parse_dataset(data)
    with pytest.raises(StageError) as info:
        dicom_io.parse_dataset(data[: len(data) - 500])
    assert info.value.error_type == "truncated"


def test_parse_refuses_garbage_after_a_valid_header():
    data = b"\0" * 128 + b"DICM" + os.urandom(300)
    with pytest.raises(StageError) as info:
        dicom_io.parse_dataset(data)
    assert info.value.error_type in {"invalid_dicom", "truncated"}


def test_describe_reports_facts_and_no_identifiers():
    data = CT.read_bytes()
    ds = dicom_io.parse_dataset(data)
    row = dicom_io.describe(SourceObject("gs://b/x.dcm", None, data), ds)
    assert set(row) == set(f.INVENTORY_SCHEMA.names)
    assert row[f.PARSE_STATUS] == f.STATUS_IMAGE
    assert row[f.MODALITY] == "CT"
    assert row[f.SOP_CLASS_NAME] == "CT Image Storage"
    assert row[f.TRANSFER_SYNTAX_NAME] == "Explicit VR Little Endian"
    assert (row[f.ROWS], row[f.COLUMNS], row[f.FRAMES]) == (128, 128, 1)
    assert row[f.HAS_PREAMBLE] is True
    assert row[f.DECODER_AVAILABLE] is True
    values = {str(v) for v in row.values()}
    for identifying in (ds.PatientName, ds.PatientID, ds.StudyInstanceUID, ds.SOPInstanceUID):
        assert str(identifying) not in values


def test_describe_never_copies_free_text_out_of_code_strings():
    ds = dicom_io.parse_dataset(CT.read_bytes())
    ds.Modality = "SMITH^JOHN"  # a broken export writing a name where a code belongs
    ds.BurnedInAnnotation = "see JOHN SMITH"
    row = dicom_io.describe(SourceObject("x", None, CT.read_bytes()), ds)
    assert row[f.MODALITY] == "INVALID"
    assert row[f.BURNED_IN_ANNOTATION] == "INVALID"


def test_describe_survives_absurd_counts_and_misplaced_uids():
    ds = dicom_io.parse_dataset(CT.read_bytes())
    ds.NumberOfFrames = "9999999999"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPInstanceUID  # an instance UID, misplaced
    row = dicom_io.describe(SourceObject("x", None, CT.read_bytes()), ds)
    assert row[f.FRAMES] is None
    assert row[f.SOP_CLASS_UID] == "UNREGISTERED"
    assert ds.SOPInstanceUID not in {str(v) for v in row.values()}


def test_describe_dicomdir_and_unsupported_compression():
    dicomdir = Path(get_testdata_file("DICOMDIR"))
    ds = dicom_io.parse_dataset(dicomdir.read_bytes())
    row = dicom_io.describe(SourceObject("x", None, dicomdir.read_bytes()), ds)
    assert row[f.PARSE_STATUS] == f.STATUS_DICOMDIR
    ds = dicom_io.parse_dataset(J2K.read_bytes())
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.112"  # JPEG XL: no decoder
    row = dicom_io.describe(SourceObject("x", None, J2K.read_bytes()), ds)
    assert row[f.DECODER_AVAILABLE] is False


def test_uid_names_do_not_depend_on_which_modules_a_process_loaded():
    """pynetdicom adds JPEG XL & co. to pydicom's UID table when imported: a worker that
    had loaded the DIMSE sources named them and took them for supported, one that had not
    did neither (CI saw both in one run). The reading layer now loads it, in every process.
    """
    code = (
        "import transforms.dicom_io; from pydicom.uid import UID; "
        "u = UID('1.2.840.10008.1.2.4.112'); print(u.name, u.is_transfer_syntax)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "JPEG XL True"


def test_parsing_a_file_with_bad_values_logs_no_phi(tmp_path):
    """pydicom warns and logs invalid values verbatim; none of it may reach a worker's log.

    Run in a fresh interpreter: pytest replaces the warning filters inside tests.
    """
    ds = pydicom.dcmread(CT)
    ds.PatientName = "LEAKY^PATIENTNAME"
    ds.StudyDate = "LEAKYDATE"  # invalid DA
    ds.Modality = "LEAKY MODALITY"
    ds.InstanceNumber = "918273"
    buf = io.BytesIO()
    ds.save_as(buf)
    path = tmp_path / "bad-values.dcm"
    # An invalid IS (pydicom would log it verbatim), patched in after encoding.
    path.write_bytes(buf.getvalue().replace(b"918273", b"LEAKY1"))
    script = (
        "import logging, sys; logging.basicConfig(level=logging.DEBUG)\n"
        "from transforms import dicom_io\n"
        f"data = open({str(path)!r}, 'rb').read()\n"
        "ds = dicom_io.parse_dataset(data)\n"
        "ds.StudyDate, ds.PatientName, ds.Modality\n"
        "try:\n    ds.InstanceNumber\nexcept ValueError:\n    pass\n"
        "print(dicom_io.describe(dicom_io.SourceObject('x', None, data), ds))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert "'modality': 'INVALID'" in done.stdout
    assert "LEAKY" not in done.stdout + done.stderr


# --- inputs ------------------------------------------------------------------------------


def test_input_uris_become_patterns(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "IMG1").write_bytes(b"x")
    assert dicom_io.normalize_uri(f"file://{tmp_path}") == str(tmp_path)
    assert dicom_io.normalize_uri(f"{tmp_path}/a/../a/./IMG1") == str(tmp_path / "a" / "IMG1")
    assert dicom_io.to_pattern(str(tmp_path)) == f"{tmp_path}/**"
    assert dicom_io.to_pattern(f"{tmp_path}/") == f"{tmp_path}/**"
    assert dicom_io.to_pattern(str(tmp_path / "a" / "IMG1")) == str(tmp_path / "a" / "IMG1")
    assert dicom_io.to_pattern(f"{tmp_path}/*/IMG*") == f"{tmp_path}/*/IMG*"
    assert list(dicom_io.match_uri(f"file://{tmp_path}")) == [(str(tmp_path / "a" / "IMG1"), 1)]
    with pytest.raises(ValueError, match="matches no objects"):
        dicom_io.check_inputs([str(tmp_path / "nothing-here")])


def test_duplicates_are_found_from_headers_and_the_first_place_wins(tmp_path):
    (tmp_path / "b.dcm").write_bytes(CT.read_bytes())
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.write(CT, "copy.dcm")
        zf.write(J2K, "other.dcm")
    paths = [(str(p), p.stat().st_size) for p in sorted(tmp_path.iterdir())]
    with TestPipeline() as p:
        found = p | beam.Create(paths) | dicom_io.FindDuplicates()
        # (place, winner): among equally complete copies the first place wins.
        winner = (str(tmp_path / "a.zip"), "copy.dcm")
        assert_that(found, equal_to([((str(tmp_path / "b.dcm"), ""), winner)]))
    assert dicom_io.instance_digest(CT.read_bytes()) != dicom_io.instance_digest(J2K.read_bytes())
    assert dicom_io.instance_digest(b"not dicom") is None


def test_duplicates_are_found_when_the_header_is_past_the_quick_prefix(tmp_path):
    """A loose copy is read from its first 64 KiB; one whose SOP Instance UID lies further
    (a large file meta element before it) goes the full way and is still matched, and a
    cut copy loses to the complete one whatever their names."""
    ds = pydicom.dcmread(CT)
    ds.file_meta.PrivateInformationCreatorUID = "1.2.3.4"
    ds.file_meta.PrivateInformation = b"\x00" * (70 * 1024)
    ds.save_as(tmp_path / "a-long-meta.dcm")
    (tmp_path / "b.dcm").write_bytes(CT.read_bytes())
    (tmp_path / "0-cut.dcm").write_bytes(CT.read_bytes()[:-1000])
    paths = [(str(p), p.stat().st_size) for p in sorted(tmp_path.iterdir())]
    with TestPipeline() as p:
        found = p | beam.Create(paths) | dicom_io.FindDuplicates()
        # Among complete copies the largest wins (here the one with the long file meta).
        winner = (str(tmp_path / "a-long-meta.dcm"), "")
        assert_that(
            found,
            equal_to(
                [
                    ((str(tmp_path / "b.dcm"), ""), winner),
                    ((str(tmp_path / "0-cut.dcm"), ""), winner),
                ]
            ),
        )


def test_a_duplicated_archive_loses_every_member_to_the_first(tmp_path):
    """Archive members are ranked as they are read (an archive is never read again per
    member); the first archive in sorted order keeps every instance."""
    for name in ("a.zip", "b.zip"):
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            zf.write(CT, "ct.dcm")
            zf.write(J2K, "j2k.dcm")
    paths = [(str(p), p.stat().st_size) for p in sorted(tmp_path.iterdir())]
    a, b = str(tmp_path / "a.zip"), str(tmp_path / "b.zip")
    with TestPipeline() as p:
        found = p | beam.Create(paths) | dicom_io.FindDuplicates()
        assert_that(
            found,
            equal_to([((b, "ct.dcm"), (a, "ct.dcm")), ((b, "j2k.dcm"), (a, "j2k.dcm"))]),
        )


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "image_dfl.dcm",
        "JPEG2000.dcm",
        "rtplan.dcm",
        "ExplVR_LitEndNoMeta.dcm",
        "ExplVR_BigEnd.dcm",
        "SC_rgb_rle.dcm",
    ],
)
def test_instance_digest_reads_the_uid_a_full_parse_reads(name):
    data = Path(get_testdata_file(name)).read_bytes()
    uid = str(pydicom.dcmread(io.BytesIO(data), force=True).SOPInstanceUID)
    assert dicom_io.instance_digest(data) == hashlib.sha256(uid.encode()).digest()[:16]


def test_the_quick_header_read_agrees_with_pydicom_wherever_it_answers():
    from transforms.dicom_io.dedupe import _partial_read_uid, _quick_uid

    answered = set()
    for path in filter(os.path.isfile, get_testdata_files("*")):
        data = Path(path).read_bytes()
        quick = _quick_uid(data)
        if quick is not None:
            answered.add(Path(path).name)
            assert quick == _partial_read_uid(data), path
        for cut in (140, 300, len(data) // 2):  # cut inside the meta, the header, the pixels
            short = _quick_uid(data[:cut])
            assert short is None or short == _partial_read_uid(data[:cut]), (path, cut)
    # The common syntaxes take the quick path; the rest go to pydicom.
    assert {"CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm"} <= answered
    assert not answered & {"MR_small_bigendian.dcm", "image_dfl.dcm", "ExplVR_LitEndNoMeta.dcm"}


# --- the composites, each in a TestPipeline on a few small objects ------------------------


def _places(pcoll, label: str):
    """SourceObjects and dead letters as comparable tuples (the bytes by their length)."""
    return pcoll | label >> beam.Map(
        lambda o: (
            (o.source, o.member, o.error_type)
            if isinstance(o, DeadLetter)
            else (o.source, o.member, len(o.data))
        )
    )


@pytest.fixture
def export(tmp_path) -> Path:
    """b.dcm (CT), a.zip (a copy of the CT, a J2K image, a README), empty.dcm."""
    (tmp_path / "b.dcm").write_bytes(CT.read_bytes())
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.write(CT, "copy.dcm")
        zf.write(J2K, "other.dcm")
        zf.writestr("README.txt", "exported by the PACS")
    (tmp_path / "empty.dcm").write_bytes(b"")
    return tmp_path


def test_match_inputs_gives_each_path_once_however_many_inputs_name_it(export):
    inputs = [str(export), f"file://{export}/b.dcm", f"{export}/*.zip"]
    expected = [(str(p), p.stat().st_size) for p in export.iterdir()]
    with TestPipeline() as p:
        assert_that(p | dicom_io.MatchInputs(inputs), equal_to(expected))


def test_read_objects_streams_archives_and_dead_letters_the_rest(export):
    paths = [(str(p), p.stat().st_size) for p in export.iterdir()]
    zip_path, loose, empty = str(export / "a.zip"), str(export / "b.dcm"), str(export / "empty.dcm")
    with TestPipeline() as p:
        objects, errors = p | beam.Create(paths) | dicom_io.ReadObjects()
        assert_that(
            _places(objects, "Objects"),
            equal_to(
                [
                    (loose, None, CT.stat().st_size),
                    (zip_path, "copy.dcm", CT.stat().st_size),
                    (zip_path, "other.dcm", J2K.stat().st_size),
                ]
            ),
            label="CheckObjects",
        )
        assert_that(
            _places(errors, "Errors"),
            equal_to([(zip_path, "README.txt", "not_dicom"), (empty, None, "empty")]),
            label="CheckErrors",
        )


def test_read_objects_caps_the_size_before_reading(export):
    paths = [(str(export / "b.dcm"), CT.stat().st_size)]
    with TestPipeline() as p:
        objects, errors = p | beam.Create(paths) | dicom_io.ReadObjects(1000)
        assert_that(objects, equal_to([]), label="CheckObjects")
        assert_that(
            _places(errors, "Errors"),
            equal_to([(str(export / "b.dcm"), None, "too_large")]),
            label="CheckErrors",
        )


def test_drop_duplicates_routes_the_later_copies_to_dead_letters():
    first, later = SourceObject("gs://b/1.dcm", None, b"x"), SourceObject("gs://b/a.zip", "2", b"x")
    with TestPipeline() as p:
        # (place, winner): FindDuplicates names the copy that is kept.
        duplicates = p | "Duplicates" >> beam.Create(
            [(("gs://b/a.zip", "2"), ("gs://b/1.dcm", ""))]
        )
        objects, errors = (
            p | "Objects" >> beam.Create([first, later]) | dicom_io.DropDuplicates(duplicates)
        )
        assert_that(objects, equal_to([first]), label="CheckObjects")
        assert_that(
            _places(errors, "Errors"),
            equal_to([("gs://b/a.zip", "2", "duplicate_instance")]),
            label="CheckErrors",
        )


def test_read_instances_reads_every_candidate_once(export):
    """Match → read → drop the later copy: the CT in the zip ("a.zip" sorts first) wins."""
    zip_path, loose, empty = str(export / "a.zip"), str(export / "b.dcm"), str(export / "empty.dcm")
    with TestPipeline() as p:
        objects, errors = p | dicom_io.ReadInstances([str(export)])
        assert_that(
            _places(objects, "Objects"),
            equal_to(
                [
                    (zip_path, "copy.dcm", CT.stat().st_size),
                    (zip_path, "other.dcm", J2K.stat().st_size),
                ]
            ),
            label="CheckObjects",
        )
        assert_that(
            _places(errors, "Errors"),
            equal_to(
                [
                    (loose, None, "duplicate_instance"),
                    (zip_path, "README.txt", "not_dicom"),
                    (empty, None, "empty"),
                ]
            ),
            label="CheckErrors",
        )


def test_inspect_dicom_describes_what_parses_and_dead_letters_what_does_not():
    ct = SourceObject("gs://b/ct.dcm", None, CT.read_bytes())
    cut = SourceObject("gs://b/cut.dcm", None, CT.read_bytes()[:1000])
    with TestPipeline() as p:
        rows, errors = p | beam.Create([ct, cut]) | dicom_io.InspectDicom()
        assert_that(
            rows
            | "Describe"
            >> beam.Map(lambda r: (r[f.SOURCE], r[f.PARSE_STATUS], r[f.MODALITY], r[f.ROWS])),
            equal_to([("gs://b/ct.dcm", f.STATUS_IMAGE, "CT", 128)]),
            label="CheckRows",
        )
        assert_that(
            errors | "Stage" >> beam.Map(lambda e: (e.source, e.stage, e.error_type)),
            equal_to([("gs://b/cut.dcm", "parse", "truncated")]),
            label="CheckErrors",
        )


def test_importing_the_reading_layer_leaves_pydicom_settings_alone():
    """pydicom's global settings change by the explicit call parsing makes, not on import."""
    code = (
        "import logging, pydicom, transforms.dicom_io as d\n"
        "from pydicom.data import get_testdata_file\n"
        "before = pydicom.config.settings.reading_validation_mode\n"
        "assert before != pydicom.config.IGNORE, before\n"
        "assert logging.getLogger('pydicom').level <= logging.CRITICAL\n"
        "d.parse_dataset(open(get_testdata_file('CT_small.dcm'), 'rb').read())\n"
        "assert pydicom.config.settings.reading_validation_mode == pydicom.config.IGNORE\n"
        "assert logging.getLogger('pydicom').level > logging.CRITICAL\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
