"""Times reading a PACS by DICOMweb and by DIMSE: our pipeline vs a plain sequential
client, and the same files from disk.

On N synthetic CT instances (copies of pydicom's CT_small.dcm with their own patient,
study and instance UIDs, ten instances a study) held by a local Orthanc with its DICOMweb
plugin and its DICOM port (the test fixture's server, on loopback) and written to a
folder too, in one run:
(a) a plain sequential dicomweb-client loop: search studies, search each study's
    instances, ``retrieve_instance`` each (one request at a time);
(b) our ``ReadDicomweb`` (QIDO search, reshuffle, WADO-RS in batches on a thread pool per
    worker, per-worker cap 8) in a Beam pipeline on DirectRunner with 2 worker processes;
(c) a plain sequential pynetdicom loop: C-FIND studies, then each study's series and
    instances, one C-GET per instance, one association at a time;
(d) our ``ReadDimse`` (C-FIND per study on the workers, one C-GET per series, cap 2
    associations per worker), same runner;
(e) our file reader over the same files on disk, same runner.
Each is timed from the start to the last instance, Beam's pipeline start-up included; the
pipelines count the instances (Beam metrics) and must see all N. Target: (b) and (d)
>= 1.8x their sequential client.

Run: ``.venv/bin/python benchmarks/dicomweb_speed.py [--instances 2000]``.
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import pydicom
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from orthanc import running_orthanc

from pipelines.options import new_pipeline
from transforms import dicom_io
from transforms.dicomweb import DicomwebSettings, ReadDicomweb, StoreUrl, make_client
from transforms.sources.dimse import ReadDimse
from transforms.sources.dimse_association import DimseSettings, NodeUrl
from transforms.sources.dimse_query import Listed, search_instances, search_studies
from transforms.sources.dimse_retrieve import retrieve


def make_corpus(root: Path, count: int) -> list[bytes]:
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    root.mkdir(parents=True, exist_ok=True)
    blobs = []
    for i in range(count):
        ds = template.copy()
        ds.PatientID = f"BENCH{i // 20:06d}"
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", str(i // 10)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", str(i // 10)])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["sop", str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = root / f"IMG{i:06d}.dcm"
        ds.save_as(path)
        blobs.append(path.read_bytes())
    return blobs


def sequential_loop(url: str) -> int:
    client = make_client(StoreUrl.parse("dicomweb+" + url), DicomwebSettings())
    count = 0
    for study in client.search_for_studies(fields=["0020000D"], limit=100000):
        study_uid = study["0020000D"]["Value"][0]
        for inst in client.search_for_instances(study_instance_uid=study_uid, limit=100000):
            client.retrieve_instance(
                study_uid, inst["0020000E"]["Value"][0], inst["00080018"]["Value"][0]
            )
            count += 1
    return count


def sequential_dimse(uri: str) -> int:
    """C-FIND and one C-GET per instance, as a script written against pynetdicom would."""
    settings = DimseSettings()
    node = NodeUrl.parse(uri)
    count = 0
    for study in search_studies(node, settings):
        assert isinstance(study, NodeUrl)
        for listed in search_instances(study, settings):
            assert isinstance(listed, Listed)
            url = NodeUrl.parse(listed.uri)
            count += len(retrieve(url, [listed], settings))
    return count


def fail(letter) -> None:
    raise RuntimeError(f"{letter.error_type}: {letter.message}")


def pipeline_count(read: beam.PTransform, counter: str) -> int:
    options = PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    p = new_pipeline(options)
    _, errors = p | "Read" >> read
    _ = errors | "NoErrors" >> beam.Map(fail)
    result = p.run()
    result.wait_until_finish()
    found = result.metrics().query(MetricsFilter().with_name(counter))["counters"]
    return sum(c.committed or c.attempted or 0 for c in found)


def timed(fn, *args) -> tuple[float, int]:
    start = time.perf_counter()
    count = fn(*args)
    return time.perf_counter() - start, count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=2000)
    args = parser.parse_args()
    n = args.instances
    with tempfile.TemporaryDirectory() as tmp, running_orthanc(dicom=True) as server:
        files = Path(tmp) / "files"
        for blob in make_corpus(files, n):
            assert server.upload(blob)
        results = {}
        results["sequential dicomweb-client loop"] = timed(sequential_loop, server.url)
        web = ReadDicomweb(["dicomweb+" + server.url], DicomwebSettings())
        results["pipeline from Orthanc (2 workers)"] = timed(
            pipeline_count, web, "dicomweb_retrieved"
        )
        results["sequential pynetdicom loop"] = timed(sequential_dimse, server.dimse)
        node = ReadDimse([server.dimse], DimseSettings(), 1 << 30)
        results["pipeline from Orthanc DIMSE (2 workers)"] = timed(
            pipeline_count, node, "dimse_retrieved"
        )
        disk = dicom_io.ReadInstances([str(files)])
        results["pipeline from disk (2 workers)"] = timed(pipeline_count, disk, "read_objects")
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    for name, (seconds, count) in results.items():
        assert count == n, (name, count)
        print(f"{name:42s} {seconds:7.2f} s  {n / seconds:8.1f} instances/s")
    for protocol, loop, ours in (
        ("DICOMweb", "sequential dicomweb-client loop", "pipeline from Orthanc (2 workers)"),
        ("DIMSE", "sequential pynetdicom loop", "pipeline from Orthanc DIMSE (2 workers)"),
    ):
        ratio = results[loop][0] / results[ours][0]
        print(f"{protocol}: ratio pipeline / sequential client {ratio:.2f} (target >= 1.8)")


if __name__ == "__main__":
    main()
