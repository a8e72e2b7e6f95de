"""`dicomflow run --config run.yaml`: the scheduled, incremental ingest → train → score chain.

One YAML names everything (see ``RunConfig``). A run takes the lock under the output
root, plans what to do, and runs the stages it planned, recording each finished stage:

- score: only the source objects that are new or changed since the last successful run
  (``state.json``), with the latest promoted model;
- ingest and train: on the first run, and again when the config says so (at least
  ``ingest.min_new_objects`` new or changed objects since the last ingest, or a changed
  label file).

A run killed at any moment leaves its plan in ``runs/<run_id>/run.json``; the next run
resumes it with the same run id and the same objects, so its outputs are replaced, not
duplicated, and nothing is skipped. ``--from-stage`` re-runs a stage and those after it.

Layout under the output root::

    _lock  state.json
    ingest/                     the training data (replaced by each ingest)
    models/                     versions, latest (the trainer's model directory)
    runs/<run_id>/run.json      plan and finished stages
    runs/<run_id>/score/        scores/model_version=V/run_id=R/, errors/, manifest.json
"""

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

from apache_beam.io.filesystems import FileSystems

from pipelines import state as st
from pipelines.flags import load_yaml
from pipelines.limits import limit_args
from pipelines.options import OneLineParser, UsageError, command_options, new_run_id
from transforms import dicom_io
from transforms.dicomweb import CredentialsError, RequestFailed, is_dicomweb
from transforms.manifest import utc_now

STAGES = ("ingest", "train", "score")
DICOMWEB_KEYS = ("query", "credentials_env", "credentials_file", "max_concurrency")
INGEST_DIR = "ingest"
MODELS_DIR = "models"
SCORE_DIR = "score"


@dataclass
class RunConfig:
    """run.yaml, checked. Unknown keys are refused (a typo must not be ignored)."""

    inputs: list[str]
    output: str
    key_env: str | None = None
    key_file: str | None = None
    labels: str | None = None
    deid_config: str | None = None
    pixel_config: str | None = None
    lock_stale_minutes: float = 10.0  # a holder silent this long (no heartbeat) is dead
    limits: dict = field(default_factory=dict)  # Limits fields → flags of ingest and score
    ingest: dict = field(default_factory=dict)  # min_new_objects, args, beam_args
    train: dict = field(default_factory=dict)  # launcher, vertex, TrainConfig fields
    score: dict = field(default_factory=dict)  # beam_args, args
    dicomweb: dict = field(default_factory=dict)  # query, credentials_env/_file, max_concurrency

    @classmethod
    def from_mapping(cls, data: dict) -> "RunConfig":
        if not isinstance(data, dict):
            raise ValueError("the run config must be a YAML mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown} (known: {sorted(known)})")
        missing = [k for k in ("inputs", "output") if not data.get(k)]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        if bool(data.get("key_env")) == bool(data.get("key_file")):
            raise ValueError("give exactly one of key_env and key_file")
        config = cls(**data)
        if isinstance(config.inputs, str):
            config.inputs = [config.inputs]
        config.inputs = [dicom_io.normalize_uri(u) for u in config.inputs]
        config.output = dicom_io.normalize_uri(config.output)
        for name, allowed in (
            ("ingest", {"min_new_objects", "args", "beam_args"}),
            ("score", {"beam_args", "args"}),
        ):
            extra = set(getattr(config, name)) - allowed
            if extra:
                raise ValueError(f"{name}: unknown keys {sorted(extra)}")
        extra = set(config.dicomweb) - set(DICOMWEB_KEYS)
        if extra:
            raise ValueError(f"dicomweb: unknown keys {sorted(extra)} (known: {DICOMWEB_KEYS})")
        try:
            config.dicomweb_settings().check()
        except (TypeError, ValueError) as e:
            raise ValueError(f"dicomweb: {e}") from None
        limit_args(config.limits)  # refuses unknown keys now, not at the ingest stage
        launcher = config.train.get("launcher", "local")
        if launcher not in ("local", "vertex"):
            raise ValueError(f"train.launcher must be local or vertex, not {launcher!r}")
        if launcher == "vertex" and not config.train.get("vertex"):
            raise ValueError("train.launcher vertex needs train.vertex (project, region, image)")
        return config

    def dicomweb_settings(self):
        from transforms.dicomweb import DicomwebSettings

        return DicomwebSettings(**self.dicomweb)

    def dicomweb_options(self, query: bool = True) -> dict:
        """The ``--dicomweb-*`` options for a stage (by option name). Score gets no query:
        its inputs are the planned instances themselves."""
        if not any(is_dicomweb(u) for u in self.inputs):
            return {}
        return {
            "dicomweb_" + key: value
            for key, value in self.dicomweb.items()
            if query or key != "query"
        }

    def key_options(self) -> dict[str, str | None]:
        return {"key_env": self.key_env, "key_file": self.key_file}

    def path(self, *parts: str) -> str:
        return FileSystems.join(self.output, *parts)


def load_config(uri: str) -> RunConfig:
    return load_yaml("--config", uri, RunConfig.from_mapping)


class StageFailed(Exception):
    """A stage ended badly; the chain stops and earlier outputs stay."""


def stage_flags(settings: dict) -> list[str]:
    """A stage's own flags from run.yaml (``args``, then ``beam_args``), as given there."""
    return [*settings.get("args", []), *settings.get("beam_args", [])]


def run_ingest(config: RunConfig, record: dict, objects: list[str]) -> dict:
    from pipelines import ingest

    given = {
        "input": list(config.inputs),
        "output": config.path(INGEST_DIR),
        **config.key_options(),
        **config.dicomweb_options(),
        "labels": config.labels,
        "deid_config": config.deid_config,
        "pixel_config": config.pixel_config,
    }
    opts, beam_options = command_options(
        "dicomflow ingest",
        ingest.IngestOptions,
        given,
        [*limit_args(config.limits), *stage_flags(config.ingest)],
    )
    ingest_config = ingest.configure(opts, beam_options)
    manifest = ingest.ingest(ingest_config, beam_options)
    print(ingest.summary(manifest, ingest_config.output), file=sys.stderr)
    return {"counts": manifest.get("counts", {})}


def run_train(config: RunConfig, record: dict, objects: list[str]) -> dict:
    from models import launchers
    from models.train_config import TrainConfig

    settings = {k: v for k, v in config.train.items() if k not in ("launcher", "vertex")}
    try:
        train_config = TrainConfig(
            data=config.path(INGEST_DIR),
            model_dir=config.path(MODELS_DIR),
            run_id=record["run_id"],
            **settings,
        )
        train_config.validate()
    except (TypeError, ValueError) as e:
        raise StageFailed(f"train settings: {e}") from None
    job: launchers.VertexJob | launchers.LocalJob
    if config.train.get("launcher", "local") == "vertex":
        job = launchers.submit_vertex(
            train_config, launchers.VertexConfig(**config.train["vertex"])
        )
    else:
        job = launchers.start_local(train_config, output=sys.stderr)
    result = job.wait()
    if result.exit_status != 0:
        raise StageFailed(f"training failed: {result.reason or f'exit {result.exit_status}'}")
    return {"version": result.version, "promoted": result.promoted, "reason": result.reason}


def run_score(config: RunConfig, record: dict, objects: list[str]) -> dict:
    from models.export import resolve_model
    from pipelines import score

    if not objects:
        return {"counts": {}, "note": "no new or changed objects"}
    model = config.path(MODELS_DIR, "latest")
    try:
        resolve_model(model)
    except ValueError as e:
        raise StageFailed(f"nothing to score with: {e}") from None
    given = {
        "input": list(objects),
        "model": model,
        "output": config.path(st.RUNS_DIR, record["run_id"], SCORE_DIR),
        "run_id": record["run_id"],
        **config.key_options(),
        **config.dicomweb_options(query=False),
    }
    opts, beam_options = command_options(
        "dicomflow score",
        score.ScoreOptions,
        given,
        [*limit_args(config.limits), *stage_flags(config.score)],
    )
    manifest = score.score(score.configure(opts, beam_options), beam_options)
    print(score.summary(manifest), file=sys.stderr)
    return {"counts": manifest.get("counts", {})}


RUNNERS: dict[str, Callable[[RunConfig, dict, list[str]], dict]] = {
    "ingest": run_ingest,
    "train": run_train,
    "score": run_score,
}


def plan(config: RunConfig, state: dict, from_stage: str | None, current: dict) -> dict:
    """A new run's record: which stages, which objects to score (by digest, see state.py).

    Args:
        current: the objects under the inputs now, as ``{digest: version}``.
    """
    changed = st.changed_objects(current, state.get("processed", {}))
    labels_version = st.list_objects([config.labels]).get(config.labels) if config.labels else None
    last = state.get("last_ingest")
    threshold = config.ingest.get("min_new_objects")
    since_ingest = st.changed_objects(current, (last or {}).get("objects", {}))
    reasons = []
    if last is None:
        reasons.append("no ingest yet")
    elif labels_version != last.get("labels_version"):
        reasons.append("the label file changed")
    elif threshold is not None and len(since_ingest) >= int(threshold):
        reasons.append(f"{len(since_ingest)} new or changed objects since the last ingest")
    stages = ["ingest", "train", "score"] if reasons else ["score"]
    if from_stage:
        stages = list(STAGES[STAGES.index(from_stage) :])
    return {
        "run_id": new_run_id(),
        "started_at": utc_now(),
        "stages": stages,
        "retrain_because": reasons,
        "objects": {digest: current[digest] for digest in changed},
        "all_objects": current,
        "labels_version": labels_version,
        "done": {},
    }


def execute_run(config: RunConfig, from_stage: str | None = None, log=print) -> int:
    """Runs (or resumes) one scheduled run under the lock; returns the exit status."""
    from transforms.keys import KeySource, KeySourceError

    try:
        key = KeySource(env=config.key_env, file=config.key_file).resolve()
    except KeySourceError as e:
        raise UsageError(str(e)) from None
    with st.Lock(config.output, new_run_id(), config.lock_stale_minutes * 60) as lock:
        listed = st.list_objects(config.inputs, config.dicomweb_settings())
        by_digest = {st.object_digest(key, uri): uri for uri in listed}
        current = st.digests(key, listed)
        state = st.read_json(config.path(st.STATE_NAME)) or {}
        record = None
        if state.get("current_run"):
            record = st.read_json(config.path(st.RUNS_DIR, state["current_run"], st.RUN_RECORD))
        if record is not None:
            log(f"run {record['run_id']}: resuming (finished: {', '.join(record['done']) or '-'})")
            if from_stage:
                later = set(STAGES[STAGES.index(from_stage) :])
                record["done"] = {k: v for k, v in record["done"].items() if k not in later}
                record["stages"] = [s for s in STAGES if s in record["stages"] or s in later]
        else:
            record = plan(config, state, from_stage, current)
            why = "; ".join(record["retrain_because"]) or "model kept"
            log(
                f"run {record['run_id']}: {len(record['objects'])} new or changed objects; "
                f"stages {' → '.join(record['stages'])} ({why})"
            )
        record_uri = config.path(st.RUNS_DIR, record["run_id"], st.RUN_RECORD)
        st.write_json(record_uri, record)
        state["current_run"] = record["run_id"]
        st.write_json(config.path(st.STATE_NAME), state)

        # A resumed run scores the objects it planned; one deleted since cannot be scored.
        objects = sorted(by_digest[d] for d in record["objects"] if d in by_digest)
        gone = len(record["objects"]) - len(objects)
        if gone:
            log(f"run {record['run_id']}: {gone} planned objects are gone and are not scored")
        for stage in record["stages"]:
            if stage in record["done"]:
                continue
            if lock.lost:
                log(f"run {record['run_id']}: another run took the lock over; stopping")
                return 1
            log(f"run {record['run_id']}: {stage} ...")
            start = time.monotonic()
            try:
                outcome = RUNNERS[stage](config, record, objects)
            except (StageFailed, UsageError) as e:
                log(
                    f"run {record['run_id']}: {stage} failed: {e}. Earlier outputs are intact; "
                    "run again to resume, or use --from-stage."
                )
                return 1
            outcome["seconds"] = round(time.monotonic() - start, 1)
            record["done"][stage] = outcome
            st.write_json(record_uri, record)
            log(f"run {record['run_id']}: {stage} done in {outcome['seconds']} s")

        processed = state.setdefault("processed", {})
        processed.update(record["objects"])
        if "ingest" in record["done"]:
            state["last_ingest"] = {
                "run_id": record["run_id"],
                "objects": record["all_objects"],
                "labels_version": record["labels_version"],
            }
        state["current_run"] = None
        state.setdefault("runs", []).append(record["run_id"])
        record["finished_at"] = utc_now()
        st.write_json(record_uri, record)
        st.write_json(config.path(st.STATE_NAME), state)
        log(f"run {record['run_id']}: finished")
        return 0


def run(argv: Sequence[str]) -> int:
    parser = OneLineParser(prog="dicomflow run", allow_abbrev=False)
    parser.add_argument("--config", required=True, help="run.yaml (local or gs://)")
    parser.add_argument("--from-stage", choices=STAGES, help="re-run this stage and the later")
    args = parser.parse_args(list(argv))
    config = load_config(args.config)
    try:
        return execute_run(config, args.from_stage, log=lambda m: print(m, file=sys.stderr))
    except st.LockHeld as e:
        print(f"dicomflow run: {e}", file=sys.stderr)
        return 3
    except (RequestFailed, CredentialsError) as e:
        print(f"dicomflow run: listing the DICOMweb input failed: {e}", file=sys.stderr)
        return 1
