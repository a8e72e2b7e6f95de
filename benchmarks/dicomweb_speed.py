"""Times reading a DICOMweb store: our pipeline vs the same files from disk vs a plain loop.

On N synthetic CT instances (copies of pydicom's CT_small.dcm with their own patient,
study and instance UIDs, ten instances a study) held by a local Orthanc with its DICOMweb
plugin (the test fixture's server, on loopback) and written to a folder too:
(a) a plain sequential dicomweb-client loop: search studies, search each study's
    instances, ``retrieve_instance`` each (one request at a time);
(b) our ``ReadDicomweb`` (QIDO search, reshuffle, WADO-RS in batches on a thread pool per
    worker, per-worker cap 8) in a Beam pipeline on DirectRunner with 2 worker processes;
(c) our ``ReadInstances`` over the same files on disk, same runner.
Each is timed from the start to the last instance, Beam's pipeline start-up included; the
pipelines count the instances (Beam metrics) and must see all N. Target: (b) >= 2x (a).

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
    with tempfile.TemporaryDirectory() as tmp, running_orthanc() as server:
        files = Path(tmp) / "files"
        for blob in make_corpus(files, n):
            assert server.upload(blob)
        results = {}
        results["sequential dicomweb-client loop"] = timed(sequential_loop, server.url)
        web = ReadDicomweb(["dicomweb+" + server.url], DicomwebSettings())
        results["pipeline from Orthanc (2 workers)"] = timed(
            pipeline_count, web, "dicomweb_retrieved"
        )
        disk = dicom_io.ReadInstances([str(files)])
        results["pipeline from disk (2 workers)"] = timed(pipeline_count, disk, "read_objects")
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    for name, (seconds, count) in results.items():
        assert count == n, (name, count)
        print(f"{name:38s} {seconds:7.2f} s  {n / seconds:8.1f} instances/s")
    loop = results["sequential dicomweb-client loop"][0]
    ours = results["pipeline from Orthanc (2 workers)"][0]
    print(f"ratio pipeline / sequential loop: {loop / ours:.2f} (target >= 2)")


if __name__ == "__main__":
    main()
