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

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems

from models import configs
from models.configs import arg, nested
from models.launchers import LAUNCHERS, VertexConfig
from models.layout import (
    INGEST_DIR,
    MODELS_DIR,
    RUN_RECORD,
    RUNS_DIR,
    SCORE_DIR,
    STATE_NAME,
    new_run_id,
)
from models.tasks import DEFAULT_TASK, SEGMENTATION, TASKS
from models.train_config import TrainConfig
from pipelines import flags
from pipelines import state as st
from pipelines.flags import KeyFlags, load_yaml
from pipelines.options import OneLineParser, UsageError, parse_options
from transforms import dicom_io
from transforms.dicom_io import Limits
from transforms.manifest import utc_now
from transforms.sources.base import ListingFailed
from transforms.sources.registry import SourceSettings

STAGES = ("ingest", "train", "score")


@dataclass(frozen=True, kw_only=True)
class StageArgs:
    """run.yaml's ``score:`` section: the stage command's own flags, as on its command line."""

    args: list[str] = arg([], "the command's own flags, e.g. [--explain-top, '20']")
    beam_args: list[str] = arg([], "Beam's options for the stage, e.g. [--runner=...]")

    def argv(self) -> list[str]:
        return [*self.args, *self.beam_args]


@dataclass(frozen=True, kw_only=True)
class IngestStage(StageArgs):
    """run.yaml's ``ingest:`` section."""

    min_new_objects: int | None = arg(
        None, "re-ingest and retrain once this many objects are new or changed"
    )


@dataclass(frozen=True, kw_only=True)
class TrainStage:
    """run.yaml's ``train:`` section: ``launcher``, ``vertex`` and ``TrainConfig``'s fields
    (all but data, model_dir and run_id, which the run sets)."""

    launcher: str = "local"
    vertex: VertexConfig | None = None
    config: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_mapping(cls, data) -> "TrainStage":
        if not isinstance(data, dict | None):
            raise ValueError("train must be a mapping")
        data = dict(data or {})
        launcher = data.pop("launcher", "local")
        if launcher not in LAUNCHERS:
            raise ValueError(f"train.launcher must be local or vertex, not {launcher!r}")
        vertex = data.pop("vertex", None)
        if launcher == "vertex" and not vertex:
            raise ValueError("train.launcher vertex needs train.vertex (project, region, image)")
        return cls(
            launcher=launcher,
            vertex=configs.from_mapping(VertexConfig, vertex, "train.vertex") if vertex else None,
            config=configs.from_mapping(
                TrainConfig, data, "train", data=None, model_dir=None, run_id=None
            ),
        )


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """run.yaml, checked: a declared config (``models.configs``). Unknown keys are refused
    (a typo must not be ignored)."""

    inputs: list[str] = arg([], "objects to watch (folders, prefixes, globs)")
    output: str = arg("", "output root: everything below lives here")
    key_env: str | None = arg(None, "environment variable holding the key")
    key_file: str | None = arg(None, "file (local or gs://) holding the key")
    task: str = arg(
        DEFAULT_TASK, "what the model learns: ingest, train and score do it", choices=TASKS
    )
    labels: str | None = arg(None, "label export (classification)")
    masks: str | None = arg(None, "more SEG and RTSTRUCT objects (segmentation)")
    mask_classes: str | None = arg(
        None, "segmentation: which segments and ROIs, by name, are which class (ingest's)"
    )
    deid_config: str | None = arg(None, "de-identification options (YAML)")
    pixel_config: str | None = arg(None, "pixel settings (YAML)")
    lock_stale_minutes: float = arg(
        10.0, "a holder silent this long (no heartbeat) is dead", positive=True
    )
    limits: Limits = nested(Limits)  # passed to ingest and score
    ingest: IngestStage = nested(IngestStage)
    train: TrainStage = field(default_factory=TrainStage)
    score: StageArgs = nested(StageArgs)
    sources: SourceSettings = nested(SourceSettings)  # each source's settings, by name

    @classmethod
    def from_mapping(cls, data) -> "RunConfig":
        if not isinstance(data, dict):
            raise ValueError("the run config must be a YAML mapping")
        known = [*configs.keys(cls), "train"]
        unknown = sorted(set(data) - set(known), key=str)
        if unknown:
            raise ValueError(f"unknown keys {unknown} (known: {sorted(known)})")
        missing = [k for k in ("inputs", "output") if not data.get(k)]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        if bool(data.get("key_env")) == bool(data.get("key_file")):
            raise ValueError("give exactly one of key_env and key_file")
        rest = {k: v for k, v in data.items() if k != "train"}
        if "task" in (data.get("train") or {}):
            raise ValueError("task is set once, at the top of run.yaml (train: takes no task)")
        if data.get("labels") and data.get("task") == SEGMENTATION:
            raise ValueError("labels are for the classification task; segmentation reads masks")
        for key in ("masks", "mask_classes"):
            if data.get(key) and data.get("task", DEFAULT_TASK) != SEGMENTATION:
                raise ValueError(f"{key} are for the segmentation task")
        try:
            train = TrainStage.from_mapping(data.get("train"))
            config = configs.from_mapping(cls, rest, "run.yaml", train=train)
        except ValueError as e:
            raise ValueError(str(e).removeprefix("run.yaml: ")) from None
        train = dataclasses.replace(
            config.train, config=dataclasses.replace(config.train.config, task=config.task)
        )
        config.sources.check()
        return dataclasses.replace(
            config,
            inputs=[dicom_io.normalize_uri(u) for u in config.inputs],
            output=dicom_io.normalize_uri(config.output),
            masks=dicom_io.normalize_uri(config.masks) if config.masks else None,
            train=train,
        )

    def key_flags(self) -> KeyFlags:
        return KeyFlags(env=self.key_env, file=self.key_file)

    def path(self, *parts: str) -> str:
        return FileSystems.join(self.output, *parts)


def load_config(uri: str) -> RunConfig:
    return load_yaml("--config", uri, RunConfig.from_mapping)


class StageFailed(Exception):
    """A stage ended badly; the chain stops and earlier outputs stay."""


def ingest_args(config: RunConfig):
    """The ingest stage's args: run.yaml's limits, then ``ingest.args``, parsed as the
    command parses them; inputs, output, key, labels and configs from run.yaml."""
    from pipelines import ingest

    argv = [*configs.to_argv(config.limits), *config.ingest.argv()]
    opts, beam_options = parse_options("dicomflow ingest", argv, ingest.IngestOptions)
    args = flags.parsed(ingest.IngestArgs, opts)
    args = dataclasses.replace(
        args,
        input=list(config.inputs),
        output=config.path(INGEST_DIR),
        key=config.key_flags(),
        labels=config.labels,
        task=config.task,
        masks=config.masks,
        mask_classes=config.mask_classes,
        deid_config=config.deid_config,
        pixel_config=config.pixel_config,
        sources=config.sources.for_inputs(config.inputs),
    )
    return args, beam_options


def score_args(config: RunConfig, run_id: str, objects: list[str], model: str):
    """The score stage's args, as ``ingest_args``; its inputs are the planned objects (a
    store's instances by their own URLs, which no query narrows again)."""
    from pipelines import score

    argv = [*configs.to_argv(config.limits), *config.score.argv()]
    opts, beam_options = parse_options("dicomflow score", argv, score.ScoreOptions)
    args = flags.parsed(score.ScoreArgs, opts)
    args = dataclasses.replace(
        args,
        input=list(objects),
        model=model,
        output=config.path(RUNS_DIR, run_id, SCORE_DIR),
        run_id=run_id,
        key=config.key_flags(),
        sources=config.sources.for_inputs(objects),
        task=config.task,  # checked against the model's own
    )
    return args, beam_options


def run_ingest(config: RunConfig, record: dict, objects: list[str]) -> dict:
    from pipelines import ingest

    args, beam_options = ingest_args(config)
    ingest_config = ingest.configure(args, beam_options)
    manifest = ingest.ingest(ingest_config, beam_options)
    print(ingest.summary(manifest, ingest_config.output), file=sys.stderr)
    return {"counts": manifest.get("counts", {})}


def run_train(config: RunConfig, record: dict, objects: list[str]) -> dict:
    from models import launchers

    stage = config.train
    train_config = dataclasses.replace(
        stage.config,
        data=config.path(INGEST_DIR),
        model_dir=config.path(MODELS_DIR),
        run_id=record["run_id"],
    )
    try:
        train_config.validate()
    except ValueError as e:
        raise StageFailed(f"train settings: {e}") from None
    job: launchers.VertexJob | launchers.LocalJob
    if stage.vertex is not None and stage.launcher == "vertex":
        job = launchers.submit_vertex(train_config, stage.vertex)
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
    args, beam_options = score_args(config, record["run_id"], objects, model)
    manifest = score.score(score.configure(args, beam_options), beam_options)
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
    threshold = config.ingest.min_new_objects
    since_ingest = st.changed_objects(current, (last or {}).get("objects", {}))
    reasons = []
    if last is None:
        reasons.append("no ingest yet")
    elif labels_version != last.get("labels_version"):
        reasons.append("the label file changed")
    elif last.get("task", DEFAULT_TASK) != config.task:
        reasons.append("the task changed")
    elif last.get("mask_classes") != config.mask_classes:
        reasons.append("the mask classes changed")
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
        "task": config.task,
        "mask_classes": config.mask_classes,
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
        listed = st.list_objects(config.inputs, config.sources)
        by_digest = {st.object_digest(key, uri): uri for uri in listed}
        current = st.digests(key, listed)
        state = st.read_json(config.path(STATE_NAME)) or {}
        record = None
        if state.get("current_run"):
            record = st.read_json(config.path(RUNS_DIR, state["current_run"], RUN_RECORD))
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
        record_uri = config.path(RUNS_DIR, record["run_id"], RUN_RECORD)
        st.write_json(record_uri, record)
        state["current_run"] = record["run_id"]
        st.write_json(config.path(STATE_NAME), state)

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
                "task": record.get("task", DEFAULT_TASK),
                "mask_classes": record.get("mask_classes"),
            }
        state["current_run"] = None
        state.setdefault("runs", []).append(record["run_id"])
        record["finished_at"] = utc_now()
        st.write_json(record_uri, record)
        st.write_json(config.path(STATE_NAME), state)
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
    except ListingFailed as e:
        print(f"dicomflow run: {e}", file=sys.stderr)
        return 1
