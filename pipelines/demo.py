"""`dicomflow demo [--workdir DIR]`: a synthetic PACS export through the whole chain.

synth → run (ingest → train → score, as `dicomflow run` does, on DirectRunner) → a printed
summary and ``report.html``. The only command allowed to make its own key: a throwaway
one, held in this process's environment and said so, never written.
"""

import os
import secrets
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import yaml

from models import configs
from models.configs import arg
from models.layout import (
    ERRORS_TABLE,
    INDEX_DIR,
    INGEST_DIR,
    MANIFEST_NAME,
    MODELS_DIR,
    RUN_RECORD,
    RUNS_DIR,
    SCORE_DIR,
    SCORES_TABLE,
    STATE_NAME,
)
from models.tasks import DEFAULT_TASK, SEGMENTATION, TASKS
from pipelines.options import OneLineParser, UsageError

KEY_VAR = "DICOMFLOW_DEMO_KEY"
SEGMENTATION_SCORE_ARGS = ["--write-seg"]  # a DICOM SEG beside each scored image
SEGMENTATION_EPOCHS = 60


@dataclass(frozen=True, kw_only=True)
class DemoArgs:
    """The flags of ``dicomflow demo``, declared once (``models.configs``)."""

    workdir: str = arg("demo-work", "local folder for everything")
    task: str = arg(
        DEFAULT_TASK,
        "classification (labels) or segmentation (a U-Net on the SEG and RTSTRUCT masks)",
        choices=TASKS,
    )
    patients: int = arg(60, "synthetic patients")
    seed: int = arg(0, "corpus seed")
    positive_rate: float = arg(
        0.4, "share of positive studies (high, so that a small corpus has both classes in test)"
    )
    difficulty: str = arg("standard", "synth's lesion task (see dicomflow synth)")
    image_size: int = arg(64, "pixels per side")
    epochs: int | None = arg(None, "most training epochs (15; 60 for segmentation)")
    key_env: str | None = arg(
        None, "use the key in this variable (reproducible splits), not a throwaway"
    )


def _parse(argv: Sequence[str]) -> DemoArgs:
    parser = OneLineParser(prog="dicomflow demo", allow_abbrev=False)
    configs.add_arguments(parser, DemoArgs)
    args = configs.from_namespace(DemoArgs, parser.parse_args(list(argv)))
    if args.patients < 4 or args.image_size < 32 or (args.epochs is not None and args.epochs < 1):
        raise UsageError("--patients >= 4, --image-size >= 32 and --epochs >= 1, please")
    from transforms.testing import Difficulty

    try:
        Difficulty.parse(args.difficulty)
    except ValueError as e:
        raise UsageError(f"--difficulty: {e}") from None
    if args.key_env and not os.environ.get(args.key_env):
        raise UsageError(f"--key-env {args.key_env}: the variable is not set")
    return args


def write_config(args: DemoArgs, workdir: str) -> str:
    """The demo's run.yaml (and pixel config): what a team would schedule, scaled down."""
    pixels = os.path.join(workdir, "pixels.yaml")
    with open(pixels, "w") as fh:
        yaml.safe_dump({"size": args.image_size}, fh)
    # A U-Net learns from fewer images per epoch (only those with a mask) and longer.
    epochs = args.epochs or (SEGMENTATION_EPOCHS if args.task == SEGMENTATION else 15)
    train = {"launcher": "local", "epochs": epochs, "seed": args.seed}
    config: dict = {
        "inputs": [os.path.join(workdir, "bucket", "export")],
        "output": os.path.join(workdir, "out"),
        "task": args.task,
        "key_env": args.key_env or KEY_VAR,
        "pixel_config": pixels,
        # More of the few demo patients in eval and test than production's 80/10/10.
        "ingest": {"args": ["--split", "0.6,0.2,0.2"]},
    }
    if args.task == SEGMENTATION:
        # The masks travel with the images (synth --masks): SEG and RTSTRUCT in the export.
        config["train"] = {**train, "min_dice": 0.5, "patience": 15}
        config["score"] = {"args": SEGMENTATION_SCORE_ARGS}
    else:
        config["labels"] = os.path.join(workdir, "bucket", "labels.csv")
        config["train"] = {**train, "min_auc": 0.5}
        config["score"] = {"args": ["--explain-top", "3"]}
    path = os.path.join(workdir, "run.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    return path


def _rows(folder: str) -> list[dict]:
    from pipelines.report import read_rows

    return read_rows(folder)


def summary(workdir: str, record: dict) -> list[str]:
    """What the demo did, in lines: counts, dead letters, AUC, top studies, where files are."""
    from models import export
    from models import features as f
    from pipelines import state as st
    from pipelines.report import redaction_counts

    out = os.path.join(workdir, "out")
    ingest = st.read_json(os.path.join(out, INGEST_DIR, MANIFEST_NAME)) or {}
    c = ingest.get("counts", {})
    lines = [
        f"ingest: {c.get('seen', 0)} objects seen, {c.get('converted', 0)} converted "
        f"({c.get('examples', 0)} examples), {c.get('dead_lettered', 0)} dead-lettered",
    ]
    reasons = Counter(
        f"{r[f.STAGE]}/{r[f.ERROR_TYPE]}"
        for r in _rows(os.path.join(out, INGEST_DIR, ERRORS_TABLE))
    )
    lines.append(
        "dead letters by reason: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common())
    )
    redacted = redaction_counts(_rows(os.path.join(out, INGEST_DIR, INDEX_DIR)))
    remaining = reasons.get("deidentify/burned_in_text_remaining", 0)
    lines.append(
        f"burned-in text: {redacted['images redacted']} images redacted "
        f"({redacted['text regions blanked']} regions blanked), "
        f"{remaining} dead-lettered with text remaining"
    )
    model_dir = os.path.join(out, MODELS_DIR)
    version = export.latest_version(model_dir)
    segmentation = False
    if version:
        metrics = st.read_json(os.path.join(model_dir, version, "metrics.json")) or {}
        segmentation = export.version_task(os.path.join(model_dir, version)).name == SEGMENTATION
        lines += (
            segmentation_lines(version, metrics) if segmentation else model_lines(version, metrics)
        )
    score_dir = os.path.join(out, RUNS_DIR, record["run_id"], SCORE_DIR)
    scores = _rows(os.path.join(score_dir, SCORES_TABLE))
    if segmentation:
        found = sum(1 for row in scores if sum(row.get(f.COMPONENT_COUNT) or []))
        lines.append(f"score: {len(scores)} images scored, {found} with a predicted finding")
        lines.append(f"files: {out} (ingest/, models/, runs/{record['run_id']}/score/)")
        return lines
    top: dict[str, float] = {}
    for row in scores:
        study = row[f.STUDY_INSTANCE_UID]
        top[study] = max(top.get(study, 0.0), row["score"])
    lines.append(f"score: {len(scores)} images scored; top studies:")
    lines += [f"  {s}  {v:.3f}" for s, v in sorted(top.items(), key=lambda kv: -kv[1])[:5]]
    lines.append(f"files: {out} (ingest/, models/, runs/{record['run_id']}/score/)")
    return lines


def segmentation_lines(version: str, metrics: dict) -> list[str]:
    """A U-Net's test figures as the demo prints them, with their 95 % intervals."""
    from models.model_card import pair_interval

    dice = pair_interval(
        metrics.get("dice"), (metrics.get("dice_ci_low"), metrics.get("dice_ci_high"))
    )
    sensitivity = pair_interval(
        metrics.get("lesion_sensitivity"), metrics.get("lesion_sensitivity_ci")
    )
    fpi = pair_interval(
        metrics.get("false_positives_per_image"), metrics.get("false_positives_per_image_ci")
    )
    return [
        f"model version {version}: test Dice {dice} on {metrics.get('examples')} images of "
        f"{metrics.get('patients')} patients",
        f"  lesions found {metrics.get('lesions_found')}/{metrics.get('lesions')}: "
        f"sensitivity {sensitivity}, {fpi} false positives per image (FROC in report.html)",
    ]


def model_lines(version: str, metrics: dict) -> list[str]:
    """The model's test figures as the demo prints them: with their 95 % intervals, at the
    operating point, calibration before and after, and how many slices are too small."""
    from models.model_card import interval

    ci = metrics.get("ci") or {}
    nan = float("nan")
    auc = interval(ci.get("roc_auc")) if ci else f"{metrics.get('roc_auc', nan):.3f}"
    lines = [
        f"model version {version}: test ROC AUC {auc}, PR AUC {metrics.get('pr_auc', nan):.3f}"
    ]
    point = metrics.get("operating_point")
    if point:
        figures = ", ".join(
            f"{name} {interval(ci.get(key))}"
            for name, key in (
                ("accuracy", "accuracy"),
                ("sensitivity", "recall"),
                ("specificity", "specificity"),
            )
        )
        lines.append(f"  at threshold {point['threshold']:.3f} ({point['rule']}): {figures}")
    cal = (metrics.get("calibration") or {}).get("test")
    if cal:
        lines.append(
            f"  calibrated ({metrics['calibration']['method']}): ECE {cal['ece_before']:.3f} → "
            f"{cal['ece_after']:.3f}, Brier {cal['brier_before']:.3f} → {cal['brier_after']:.3f}"
        )
    slices = metrics.get("slices") or {}
    rows = [r for values in slices.values() for r in values]
    if rows:
        small = sum(r["small"] for r in rows)
        lines.append(
            f"  slices: {len(rows)} over {', '.join(slices)}; {small} flagged small "
            "(see report.html)"
        )
    return lines


def run(argv: Sequence[str]) -> int:
    from apache_beam.options.pipeline_options import PipelineOptions
    from rich.console import Console

    from pipelines import run as run_mod
    from pipelines import state as st
    from pipelines import synth
    from pipelines.report import build_report
    from transforms.testing import Difficulty

    args = _parse(argv)
    console = Console(stderr=True)
    workdir = os.path.abspath(args.workdir)
    for name in ("bucket", "out", "report.html"):  # a demo starts from nothing
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    os.makedirs(workdir, exist_ok=True)
    started = time.monotonic()
    console.rule("dicomflow demo")
    corpus = synth.SynthConfig(
        output=os.path.join(workdir, "bucket"),
        patients=args.patients,
        seed=args.seed,
        positive_rate=args.positive_rate,
        difficulty=Difficulty.parse(args.difficulty),  # checked in _parse
        masks=args.task == SEGMENTATION,
    )
    with console.status("synth: writing a synthetic PACS export ..."):
        synth.synthesize(corpus, PipelineOptions([]))
        print(synth.summary(corpus), file=sys.stderr)
    console.print(f"synth: {args.patients} patients → {workdir}/bucket")
    if args.key_env:
        console.print(f"demo: using the key in ${args.key_env}")
    else:
        console.print("demo: using a throwaway de-identification key (never written anywhere)")
        os.environ[KEY_VAR] = secrets.token_hex(32)
    config = run_mod.load_config(write_config(args, workdir))
    status = console.status("run: planning ...")
    status.start()

    def log(message: str) -> None:
        if message.endswith("..."):
            status.update(message)
        else:
            console.print(message)

    try:
        code = run_mod.execute_run(config, log=log)
    finally:
        status.stop()
    if code != 0:
        console.print("[red]demo: the run failed; see the messages above[/red]")
        return code
    state = st.read_json(os.path.join(config.output, STATE_NAME))
    assert state is not None  # a run that succeeded wrote it
    record = st.read_json(os.path.join(config.output, RUNS_DIR, state["runs"][-1], RUN_RECORD))
    assert record is not None
    for stage, outcome in record["done"].items():
        counts = outcome.get("counts", {})
        done = counts.get("seen", counts.get("scored", 0))
        rate = done / outcome["seconds"] if outcome.get("seconds") else 0
        extra = f", {done} objects, {rate:.1f}/s" if counts else ""
        console.print(f"  {stage}: {outcome['seconds']} s{extra}")
    from models import export

    out = config.output
    version = export.latest_version(os.path.join(out, MODELS_DIR))
    html = build_report(
        os.path.join(out, INGEST_DIR),
        os.path.join(out, MODELS_DIR, version) if version else None,
        os.path.join(out, RUNS_DIR, record["run_id"], SCORE_DIR),
        synthetic=os.path.join(workdir, "bucket"),
    )
    report = os.path.join(workdir, "report.html")
    with open(report, "w") as fh:
        fh.write(html)
    console.rule("summary")
    for line in summary(workdir, record):
        console.print(line, highlight=False)
    console.print(f"report: {report}")
    console.print(f"demo finished in {time.monotonic() - started:.0f} s")
    print(report, file=sys.stdout)
    return 0
