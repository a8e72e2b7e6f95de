"""`dicomflow deidentify`: de-identified DICOM Part 10 copies of an export (PS3.15 Annex E).

The same reading layer and ``Deidentify`` transform that ingest and scoring use, written
out as ``deid_dicom/<new SOPInstanceUID>.dcm`` so a re-run with the same key overwrites
instead of duplicating, with ``errors/`` and ``manifest.json`` (key fingerprint, never the
key). Nothing is deleted: output written under another key stays until its owner removes
it.
"""

import re
import sys
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from models import features as f
from pipelines.failures import yaml_error
from pipelines.limits import add_limit_arguments, limits_from
from pipelines.options import (
    CommandOptions,
    UsageError,
    check_output_outside,
    execute,
    new_pipeline,
    new_run_id,
    parse_options,
    require,
)
from transforms import dicom_io
from transforms.deadletter import DEAD_LETTER, STAGE_WRITE, DeadLetter
from transforms.deid import DeidConfig, Deidentify, DeidResult, Profile
from transforms.keys import KeySource, KeySourceError, fingerprint
from transforms.linkage import write_linkage
from transforms.manifest import WriteManifest, code_version, error_keys, utc_now
from transforms.parquet import WriteParquet, table_dir
from transforms.storage import write_bytes

DEID_DIR = "deid_dicom"
ERRORS_TABLE = "errors"


class DeidentifyOptions(CommandOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", action="append", help="file, folder, prefix or glob")
        parser.add_argument("--output", help="output root (local path or gs://)")
        parser.add_argument("--key-env", help="environment variable holding the secret key")
        parser.add_argument("--key-file", help="file (local or gs://) holding the secret key")
        parser.add_argument("--deid-config", help="YAML with profile options (see README)")
        parser.add_argument(
            "--max-object-bytes", type=int, default=dicom_io.DEFAULT_MAX_OBJECT_BYTES
        )
        add_limit_arguments(parser)
        parser.add_argument(
            "--linkage-output", help="write the encrypted original→pseudonym table here"
        )
        parser.add_argument("--linkage-key-env", help="variable holding the linkage key")
        parser.add_argument("--linkage-key-file", help="file holding the linkage key")


def key_source(env: str | None, file: str | None, what: str, dataflow: bool) -> KeySource:
    """A validated key source; the key is read once here to fail before any work."""
    if env is None and file is None:
        raise UsageError(f"{what} is required: --{what}-env VAR or --{what}-file PATH")
    if env is not None and file is not None:
        raise UsageError(f"give only one of --{what}-env and --{what}-file")
    if dataflow and (env is not None or not str(file).startswith("gs://")):
        raise UsageError(f"Dataflow workers read the {what} from --{what}-file gs://... only")
    source = KeySource(env=env, file=dicom_io.normalize_uri(file) if file else None)
    try:
        source.resolve()
    except KeySourceError as e:
        raise UsageError(str(e)) from None
    return source


def deid_header(
    pipeline: str, run_id: str | None, inputs: list[str], key: KeySource, config: DeidConfig
) -> dict:
    """The manifest facts every de-identifying pipeline records (the key's fingerprint only)."""
    return {
        "pipeline": pipeline,
        "run_id": run_id or new_run_id(),
        "code_version": code_version(),
        "started_at": utc_now(),
        "inputs": inputs,
        "key_fingerprint": fingerprint(key.resolve()),
        "deid_profile": Profile.load().standard,
        "deid_options": config.describe(),
    }


def load_config(uri: str | None) -> DeidConfig:
    if uri is None:
        return DeidConfig()
    try:
        with FileSystems.open(dicom_io.normalize_uri(uri)) as fh:
            text = fh.read().decode()
    except Exception as e:
        raise UsageError(f"--deid-config {uri} cannot be read ({type(e).__name__})") from None
    import yaml

    try:
        return DeidConfig.from_yaml(text)
    except yaml.YAMLError as e:
        raise yaml_error("--deid-config", uri, e) from None
    except (ValueError, TypeError) as e:
        raise UsageError(f"--deid-config {uri}: {e}") from None


_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class WriteDeidFn(beam.DoFn):
    """Writes one de-identified instance, named by its new SOPInstanceUID.

    Names are checked: with retain_uids the UID is the source's own, and a malformed one
    ("../x") must not choose where the file goes.
    """

    def __init__(self, directory: str):
        self._directory = directory
        self._written = Metrics.counter(dicom_io.METRICS_NAMESPACE, "deid_files_written")

    def process(self, element: tuple[str, str | None, DeidResult]):
        source, member, result = element
        uid = result.sop_instance_uid
        if not (_UID.match(uid) and len(uid) <= 64):
            message = "the SOPInstanceUID is not a valid UID; no file name can be made from it"
            letter = DeadLetter(source, member, STAGE_WRITE, "invalid_uid", message)
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
            return
        try:
            path = FileSystems.join(self._directory, f"{uid}.dcm")
            write_bytes(path, result.data, "application/dicom")
        except Exception as e:
            message = f"cannot write the de-identified file ({type(e).__name__})"
            letter = DeadLetter(source, member, STAGE_WRITE, "write_failed", message)
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
            return
        self._written.inc()
        yield result.modality


def build_pipeline(
    opts: DeidentifyOptions, beam_options: PipelineOptions, run_id: str | None = None
) -> beam.Pipeline:
    """Builds (does not run) the deidentify pipeline; checks arguments and keys first."""
    inputs = [dicom_io.normalize_uri(u) for u in require(opts.input, "--input")]
    output = dicom_io.normalize_uri(require(opts.output, "--output"))
    check_output_outside(output, inputs)
    limits = limits_from(opts)
    dataflow = "Dataflow" in str(beam_options.view_as(StandardOptions).runner or "")
    key = key_source(opts.key_env, opts.key_file, "key", dataflow)
    config = load_config(opts.deid_config)
    linkage_key = None
    if opts.linkage_output:
        linkage_key = key_source(
            opts.linkage_key_env, opts.linkage_key_file, "linkage-key", dataflow
        )
        if fingerprint(linkage_key.resolve()) == fingerprint(key.resolve()):
            raise UsageError("the linkage key must differ from the pseudonymization key")
    elif opts.linkage_key_env or opts.linkage_key_file:
        raise UsageError("--linkage-key-* needs --linkage-output")
    header = {
        **deid_header("deidentify", run_id, inputs, key, config),
        "linkage": bool(opts.linkage_output),
        "limits": limits.describe(),
    }

    p = new_pipeline(beam_options)
    objects, read_errors = p | "ReadInstances" >> dicom_io.ReadInstances(inputs, limits)
    results, deid_errors, linkage = objects | "Deidentify" >> Deidentify(
        config, key, linkage=bool(opts.linkage_output), limits=limits
    )
    written = results | "WriteDeidDicom" >> beam.ParDo(
        WriteDeidFn(FileSystems.join(output, DEID_DIR))
    ).with_outputs(DEAD_LETTER, main="files")
    files = written.files | "CountFiles" >> beam.combiners.Count.Globally()
    errors = (
        (read_errors, deid_errors, written[DEAD_LETTER])
        | "AllDeadLetters" >> beam.Flatten()
        | "ErrorRows" >> beam.Map(DeadLetter.to_row)
    )
    error_files = errors | "WriteErrors" >> WriteParquet(
        table_dir(output, ERRORS_TABLE), f.ERRORS_SCHEMA
    )
    if linkage is not None:
        _ = (
            linkage
            | "DistinctLinks" >> beam.Distinct()
            | "CollectLinks" >> beam.combiners.ToList()
            | "WriteLinkage"
            >> beam.Map(write_linkage, dicom_io.normalize_uri(opts.linkage_output), linkage_key)
        )
    _ = (
        (
            written.files
            | "DeidKeys"
            >> beam.Map(lambda m: ["seen", "deidentified", ("by_modality", m or "none")]),
            errors | "ErrorKeys" >> beam.Map(error_keys),
        )
        | "AllKeys" >> beam.Flatten()
        | "WriteManifest"
        >> WriteManifest(output, header, {DEID_DIR: files, ERRORS_TABLE: error_files})
    )
    return p


def run(argv: Sequence[str]) -> int:
    opts, beam_options = parse_options("dicomflow deidentify", argv, DeidentifyOptions)
    pipeline = build_pipeline(opts, beam_options)
    output = dicom_io.normalize_uri(opts.output)
    manifest = execute(pipeline, [dicom_io.normalize_uri(u) for u in opts.input], output)
    counts = manifest["counts"]
    print(
        f"deidentify: {counts.get('seen', 0)} objects seen, "
        f"{counts.get('deidentified', 0)} de-identified, "
        f"{counts.get('dead_lettered', 0)} dead-lettered → {output} "
        f"(key fingerprint {manifest['key_fingerprint']})",
        file=sys.stderr,
    )
    return 0
