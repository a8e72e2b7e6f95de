"""deploy/: images, flex templates, schedulers and the runbook, checked without a cloud.

Nothing here builds an image or calls Google Cloud: the tests check what those would be
given (pins, parameters, requests, command lines) against the code that defines them, run
the flex-template launcher against the GCS emulator with a Dataflow dry run, and import the
Airflow DAGs in a real Airflow (its own virtualenv, made by `make airflow-venv`).
"""

import argparse
import ast
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from conftest import DATAFLOW_DRY_RUN, dry_run_steps
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipelines.ingest import IngestOptions
from pipelines.options import CommandOptions

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILES = {
    name: DEPLOY / f"{name}.Dockerfile"
    for name in ("worker", "worker-gpu", "trainer", "flex-template")
}
AIRFLOW_PYTHON = ROOT / ".venv-airflow" / "bin" / "python"
# The DICOM stack: the trainer image must do without it (docs/architecture.md, the import rule).
DICOM_STACK = {
    "pydicom",
    "pylibjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-rle",
    "pyjpegls",
    "python-gdcm",
}
# Options a template cannot take: Dataflow workers never see the launcher's environment.
# Secrets from the environment cannot reach Dataflow workers: only the file forms are offered.
NOT_TEMPLATE_PARAMETERS = {"key_env", "dicomweb_credentials_env", "output_store_credentials_env"}
# FlexTemplateRuntimeEnvironment fields (Dataflow REST v1b3): a typo would be rejected.
FLEX_ENVIRONMENT_FIELDS = {
    "numWorkers",
    "maxWorkers",
    "zone",
    "serviceAccountEmail",
    "tempLocation",
    "machineType",
    "additionalExperiments",
    "network",
    "subnetwork",
    "additionalUserLabels",
    "kmsKeyName",
    "ipConfiguration",
    "workerRegion",
    "workerZone",
    "enableStreamingEngine",
    "flexrsGoal",
    "stagingLocation",
    "sdkContainerImage",
    "diskSizeGb",
    "autoscalingAlgorithm",
    "dumpHeapOnOom",
    "saveHeapDumpsToGcsPath",
    "launcherMachineType",
    "enableLauncherVmSerialPortLogging",
    "streamingMode",
}


# --- helpers --------------------------------------------------------------------------------


def setup_py() -> dict:
    """setup.py's version and pins (install and extras), read with ast (not imported)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    pins, version = {}, None
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "version":
            version = ast.literal_eval(node.value)
        if not isinstance(node, ast.Assign):
            continue
        name = getattr(node.targets[0], "id", "")
        if name == "INSTALL_REQUIRES":
            items = ast.literal_eval(node.value)
        elif name == "EXTRAS_REQUIRE":
            items = [i for group in ast.literal_eval(node.value).values() for i in group]
        else:
            items = []
        for item in items:
            req = Requirement(item)
            pins.setdefault(canonicalize_name(req.name), str(req.specifier))
    return {"pins": pins, "version": version}


# name[extras]==version (or another specifier), quoted or not, as pip takes it.
_REQUIREMENT = re.compile(
    r"([A-Za-z0-9][A-Za-z0-9._-]*(?:\[[^\]]+\])?(?:==|>=|<=|~=|<|>)[^\s\"']+)"
)


def dockerfile(name: str) -> dict:
    """A Dockerfile's bases, pip requirements and constraints, COPY sources, ENV, ENTRYPOINT."""
    text = DOCKERFILES[name].read_text()
    logical = re.sub(r"\\\n", " ", text)
    lines = [
        ln.strip() for ln in logical.splitlines() if ln.strip() and not ln.strip().startswith("#")
    ]
    args = {}
    out = {
        "from": [],
        "requirements": [],
        "constraints": [],
        "copy": [],
        "env": {},
        "entrypoint": None,
    }
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
        elif word == "FROM":
            out["from"].append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0]))
        elif word == "RUN":
            for command in re.split(r"&&|;", rest):
                if "constraints" in command and command.strip().startswith("echo"):
                    out["constraints"] += [Requirement(r) for r in _REQUIREMENT.findall(command)]
                elif "pip install" in command:
                    out["requirements"] += [Requirement(r) for r in _REQUIREMENT.findall(command)]
        elif word == "COPY":
            out["copy"].append(rest.split()[0])
        elif word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                out["env"][key] = value
        elif word == "ENTRYPOINT":
            out["entrypoint"] = json.loads(rest)
    return out


def option_names(options: type) -> set[str]:
    """A command's own options as template parameter names (argparse dests, some renamed)."""
    return set(flex_main().parameter_flags(options))


def beam_flags() -> set[str]:
    """Every flag of Beam's own options (``--temp_location``, ``--no_use_public_ips``, ...)."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(add_help=False)
    for cls in PipelineOptions.__subclasses__():
        if not issubclass(cls, CommandOptions):
            cls._add_argparse_args(parser)
    return {flag for a in parser._actions for flag in a.option_strings}


def metadata_json(template: str) -> dict:
    return json.loads((DEPLOY / "flex" / template / "metadata.json").read_text())


def flex_main():
    spec = importlib.util.spec_from_file_location("flex_main", DEPLOY / "flex_main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_launch(parameters: dict, template: str, environment: dict) -> None:
    """A flex-template launch (Workflows or Cloud Scheduler) fits the template's metadata."""
    params = metadata_json(template)["parameters"]
    names = {p["name"] for p in params}
    required = {p["name"] for p in params if not p.get("isOptional")}
    assert set(parameters) <= names, f"{template}: not in metadata.json: {set(parameters) - names}"
    assert required <= set(parameters), (
        f"{template}: required missing: {required - set(parameters)}"
    )
    unknown = set(environment) - FLEX_ENVIRONMENT_FIELDS
    assert not unknown, f"not FlexTemplateRuntimeEnvironment fields: {unknown}"
    assert environment["ipConfiguration"] == "WORKER_IP_PRIVATE"


# --- images -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_pins_equal_setup_py(name):
    pins = setup_py()["pins"]
    image = dockerfile(name)
    for req in image["requirements"] + image["constraints"]:
        key = canonicalize_name(req.name)
        assert key in pins, f"{name}: {req.name} is not pinned in setup.py"
        assert str(req.specifier) == pins[key], f"{name}: {req} but setup.py has {pins[key]}"
    for base in image["from"]:
        if base.startswith("apache/beam_python"):
            assert base.split(":")[1] == pins["apache-beam"].removeprefix("=="), base


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_python_311_everywhere(name):
    (base,) = dockerfile(name)["from"]
    assert re.search(r"python[-_:]?3\.?11", base), base


def test_worker_images_carry_the_package_on_the_beam_sdk_image():
    for name in ("worker", "worker-gpu", "flex-template"):
        image = dockerfile(name)
        assert {"pipelines/", "transforms/", "models/", "setup.py"} <= set(image["copy"]), name
    for name in ("worker", "worker-gpu"):
        # Beam's image: its boot entrypoint (/opt/apache/beam/boot) stays in place.
        assert dockerfile(name)["from"][0].startswith("apache/beam_python3.11_sdk:")
        assert dockerfile(name)["entrypoint"] is None
    flex = dockerfile("flex-template")
    assert flex["env"]["FLEX_TEMPLATE_PYTHON_PY_FILE"] == "/template/deploy/flex_main.py"
    assert "deploy/flex_main.py" in flex["copy"]
    assert flex["env"]["DICOMFLOW_TEMPLATE"] == "${TEMPLATE}"
    gpu = {canonicalize_name(r.name): r for r in dockerfile("worker-gpu")["requirements"]}
    assert "and-cuda" in gpu["tensorflow"].extras
    # The OCR detector runs on CUDA there: onnxruntime-gpu replaces the CPU build.
    assert "onnxruntime-gpu" in gpu
    assert "pip uninstall -y onnxruntime" in DOCKERFILES["worker-gpu"].read_text()
    assert "onnxruntime-gpu" not in {
        canonicalize_name(r.name) for r in dockerfile("worker")["requirements"]
    }


def test_trainer_image_runs_models_trainer_without_the_dicom_stack():
    from models.launchers import TRAINER_COMMAND

    image = dockerfile("trainer")
    assert image["entrypoint"] == TRAINER_COMMAND
    assert image["copy"] == ["models/"]
    names = {canonicalize_name(r.name) for r in image["requirements"]}
    assert not names & (DICOM_STACK | {"apache-beam"})
    # Beam only comes in through tensorflow-transform, held at the pin by a constraint.
    assert [canonicalize_name(r.name) for r in image["constraints"]] == ["apache-beam"]

    provided = requirement_closure([r.name for r in image["requirements"]])
    assert not provided & DICOM_STACK
    for module in trainer_imports():
        dist = providing_distribution(module)
        assert dist in provided, f"models/ imports {module} ({dist}): not in the trainer image"


def requirement_closure(names: list[str]) -> set[str]:
    """Distributions that installing ``names`` brings, from this environment's metadata."""
    seen: set[tuple[str, frozenset]] = set()
    todo = [(n, frozenset()) for n in names]
    while todo:
        name, extras = todo.pop()
        key = (canonicalize_name(name), extras)
        if key in seen:
            continue
        seen.add(key)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker and not any(req.marker.evaluate(env) for env in envs):
                continue
            todo.append((req.name, frozenset(req.extras)))
    return {name for name, _ in seen}


def trainer_imports() -> set[str]:
    """Third-party modules that `python -m models.trainer` imports, following models.*."""
    found, todo, done = set(), ["models.trainer"], set()
    while todo:
        module = todo.pop()
        if module in done:
            continue
        done.add(module)
        tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "models":
                    if (ROOT / (name.replace(".", "/") + ".py")).exists():
                        todo.append(name)
                elif (
                    top not in sys.stdlib_module_names and top != "__future__" and _is_module(name)
                ):
                    found.add(name)
    # launchers.py (the submitting side) is not part of the training job.
    assert "models.launchers" not in done
    return found


def _is_module(name: str) -> bool:
    """A module with a file of its own (not a namespace package, not a class in a module)."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return False
    return spec is not None and spec.origin is not None


def providing_distribution(module: str) -> str:
    spec = importlib.util.find_spec(module)
    origin = Path(spec.origin)
    for dist_name in metadata.packages_distributions().get(module.split(".")[0], []):
        dist = metadata.distribution(dist_name)
        for file in dist.files or []:
            if Path(dist.locate_file(file)).resolve() == origin.resolve():
                return canonicalize_name(dist_name)
    raise AssertionError(f"no distribution provides {module} ({origin})")


def test_cloudbuild_builds_every_image_at_the_package_version():
    build = yaml.safe_load((DEPLOY / "cloudbuild.yaml").read_text())
    assert build["substitutions"]["_VERSION"] == setup_py()["version"]
    files = set()
    for step in build["steps"][1:]:
        args = step["args"]
        files.add(args[args.index("-f") + 1])
        tag = args[args.index("-t") + 1]
        assert tag in build["images"] and tag.endswith(":${_VERSION}")
        if "flex-template" in args[args.index("-f") + 1]:
            template = args[args.index("--build-arg") + 1].removeprefix("TEMPLATE=")
            assert (DEPLOY / "flex" / template / "metadata.json").exists()
    assert files == {f"deploy/{p.name}" for p in DOCKERFILES.values()}
    assert len(build["images"]) == len(build["steps"]) - 1


# --- flex templates -------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["ingest", "score"])
def test_flex_metadata_describes_every_parameter(template):
    meta = metadata_json(template)
    assert meta["name"] and meta["description"]
    for param in meta["parameters"]:
        assert {"name", "label", "helpText", "isOptional"} <= set(param), param
        for regex in param.get("regexes", []):
            re.compile(regex)
    names = [p["name"] for p in meta["parameters"]]
    assert len(names) == len(set(names))
    # Named like Beam's own options, and never one of them.
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names)
    assert not {f"--{n}" for n in names} & beam_flags()
    required = {p["name"] for p in meta["parameters"] if not p["isOptional"]}
    assert required == (
        {"input", "output", "key_file"} if template == "ingest" else {"input", "model", "output"}
    )


def test_ingest_template_parameters_are_the_ingest_options():
    names = {p["name"] for p in metadata_json("ingest")["parameters"]}
    assert names == option_names(IngestOptions) - NOT_TEMPLATE_PARAMETERS


def test_score_template_parameters_are_the_score_options():
    from pipelines.score import ScoreOptions

    names = {p["name"] for p in metadata_json("score")["parameters"]}
    assert names == option_names(ScoreOptions) - NOT_TEMPLATE_PARAMETERS


def test_flex_launcher_turns_parameters_into_the_command_flags():
    from pipelines.score import ScoreOptions

    launcher = flex_main()
    flags = launcher.parameter_flags(IngestOptions)
    argv = ["--key_file=gs://k/key", "--tfrecord_shards", "8", "--temp_location=gs://t"]
    assert launcher.command_argv(argv, flags) == [
        "--key-file=gs://k/key",
        "--tfrecord-shards",
        "8",
        "--temp_location=gs://t",
    ]
    # Beam's --labels (job labels) stays Beam's; ingest's label export is label_file.
    argv = ["--labels=team=imaging", "--label_file=gs://l/labels.csv"]
    assert launcher.command_argv(argv, flags) == [
        "--label=team=imaging",
        "--labels=gs://l/labels.csv",
    ]
    # A switch takes true or false as a template parameter.
    flags = launcher.parameter_flags(ScoreOptions)
    on, off = "--share_model_across_processes=true", "--share_model_across_processes=False"
    assert launcher.command_argv([on, "--run_id=r1"], flags) == [
        "--share-model-across-processes",
        "--run-id=r1",
    ]
    assert launcher.command_argv([off], flags) == []


def test_flex_launcher_needs_a_template():
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "flex_main.py")],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "DICOMFLOW_TEMPLATE"},
    )
    assert result.returncode == 2
    assert "unknown template ''" in result.stderr and "usage: flex_main.py {ingest|score}" in (
        result.stderr
    )


def test_flex_launcher_submits_the_ingest_job_without_waiting(gcs, monkeypatch):
    from apache_beam.io.filesystems import FileSystems

    key_uri = f"{gcs}/flex/deid.key"
    with FileSystems.create(key_uri) as fh:
        fh.write(b"k" * 64)
    with FileSystems.create(f"{gcs}/flex/export/a.dcm") as fh:
        fh.write(b"not read: the job is only built")
    params = [
        f"--input={gcs}/flex/export/",
        f"--output={gcs}/flex/ingest",
        f"--key_file={key_uri}",
        "--tfrecord_shards=4",
    ]
    launcher = flex_main()
    result = launcher.submit("ingest", [*params, *DATAFLOW_DRY_RUN])
    steps = {"ReadInstances", "PrepareInstances", "TfTransform", "WriteIndex"}
    assert steps <= dry_run_steps(result)

    # The image names its template; bad parameters are one line and exit 2, before any job.
    monkeypatch.setenv(launcher.TEMPLATE_ENV, "ingest")
    assert launcher.main([*params[1:], *DATAFLOW_DRY_RUN]) == 2
    empty = [f"--input={gcs}/flex/nothing/", *params[1:], *DATAFLOW_DRY_RUN]
    assert launcher.main(empty) == 2
    assert launcher.main(["--key_env=K", *params[:2], *DATAFLOW_DRY_RUN]) == 2


def test_flex_launcher_reaches_the_score_pipeline(gcs, monkeypatch, capsys):
    launcher = flex_main()
    monkeypatch.setenv(launcher.TEMPLATE_ENV, "score")
    argv = [f"--input={gcs}/flex/export/", f"--output={gcs}/flex/scores", *DATAFLOW_DRY_RUN]
    assert launcher.main(argv) == 2
    assert "flex_main.py score: error: --model is required" in capsys.readouterr().err


def test_flex_launcher_reports_bad_parameters(gcs, monkeypatch, capsys):
    launcher = flex_main()
    monkeypatch.setenv(launcher.TEMPLATE_ENV, "ingest")
    assert launcher.main([f"--output={gcs}/o", f"--key_file={gcs}/k", *DATAFLOW_DRY_RUN]) == 2
    assert "flex_main.py ingest: error: --input is required" in capsys.readouterr().err


# --- schedulers -----------------------------------------------------------------------------


def workflow() -> dict:
    return yaml.safe_load((DEPLOY / "workflows" / "pipeline.yaml").read_text())


def steps(subworkflow: dict) -> dict:
    return {name: body for step in subworkflow["steps"] for name, body in step.items()}


def assigned(subworkflow: dict, variable: str) -> dict:
    """A map variable as the workflow builds it: its literal plus ``variable.key`` assignments."""
    value: dict = {}

    def visit(node):
        if isinstance(node, dict):
            for key, item in node.items():
                if key == "assign":
                    for pair in item:
                        for name, v in pair.items():
                            if name == variable:
                                value.update(v)
                            elif name.startswith(variable + "."):
                                value[name.split(".", 1)[1]] = v
                visit(item)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(subworkflow)
    return value


def test_workflow_chains_ingest_training_and_score():
    wf = workflow()
    main = steps(wf["main"])
    order = list(main)
    assert order.index("ingest") < order.index("train") < order.index("wait_train")
    assert order.index("wait_train") < order.index("score") < order.index("done")
    assert main["train"]["call"] == "googleapis.aiplatform.v1.projects.locations.customJobs.create"
    launch = steps(wf["run_flex_template"])["launch"]
    assert launch["call"] == "googleapis.dataflow.v1b3.projects.locations.flexTemplates.launch"
    # Each job is waited for, and only success lets the chain go on.
    assert steps(wf["run_flex_template"])["wait"]["call"] == "wait_for_dataflow_job"
    assert main["wait_train"]["call"] == "wait_for_custom_job"
    for name in ("wait_for_dataflow_job", "wait_for_custom_job"):
        text = yaml.safe_dump(wf[name])
        assert "raise" in text and "sys.sleep" in text

    for step, template in (("ingest", "ingest"), ("score", "score")):
        args = main[step]["args"]
        assert args["template"].endswith(f'"/{template}.json"}}'), args["template"]
        parameters = assigned(wf["main"], args["parameters"].strip("${}"))
        environment = assigned(wf["run_flex_template"], "environment")
        check_launch(parameters, template, environment)


def test_workflow_trains_with_the_trainer_arguments():
    from models import trainer
    from models.launchers import TRAINER_COMMAND

    job = assigned(workflow()["main"], "custom_job")
    (pool,) = job["jobSpec"]["workerPoolSpecs"]
    assert pool["containerSpec"]["command"] == TRAINER_COMMAND
    assert job["jobSpec"]["scheduling"] == {"restartJobOnWorkerRestart": True}
    argv = [_default_or_uri(a) for a in pool["containerSpec"]["args"]]
    parser = argparse.ArgumentParser()
    trainer.add_arguments(parser)
    config = trainer.config_from_args(parser.parse_args(argv))
    assert config.data and config.model_dir and config.run_id


def _default_or_uri(value: str) -> str:
    """A workflow expression's value for a test: the get_env default, or a gs:// URI."""
    default = re.fullmatch(r'\$\{sys\.get_env\("\w+", "([^"]*)"\)\}', value)
    return default.group(1) if default else "gs://b/x" if value.startswith("${") else value


def test_workflow_settings_are_all_in_the_example_env_file():
    text = (DEPLOY / "workflows" / "pipeline.yaml").read_text()
    used = set(re.findall(r'sys\.get_env\("(DICOMFLOW_\w+)"', text))
    example = yaml.safe_load((DEPLOY / "workflows" / "env.example.yaml").read_text())
    assert used == set(example)
    assert all(isinstance(v, str) for v in example.values())


def substituted(path: Path) -> str:
    """A spec with its ${VARS} filled in, as envsubst would."""
    return re.sub(r"\$\{(\w+)\}", lambda m: f"gs://x/{m.group(1).lower()}", path.read_text())


def test_cloud_scheduler_body_launches_the_ingest_template():
    body = json.loads(substituted(DEPLOY / "scheduler" / "ingest-nightly.json"))
    launch = body["launchParameter"]
    assert launch["containerSpecGcsPath"].endswith("/ingest.json")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", launch["jobName"])
    check_launch(launch["parameters"], "ingest", launch["environment"])


def test_cron_line_runs_dicomflow_run_under_flock_with_a_log():
    lines = [
        ln
        for ln in (DEPLOY / "cron" / "dicomflow.cron").read_text().splitlines()
        if ln.strip() and not ln.startswith("#") and not re.match(r"^[A-Z]+=", ln)
    ]
    (line,) = lines
    fields = line.split(None, 6)
    minute, hour, dom, month, dow, user, command = fields
    assert minute.isdigit() and hour.isdigit() and (dom, month, dow) == ("*", "*", "*")
    assert user == "dicomflow"
    assert "%" not in command  # cron turns a bare % into a newline
    assert re.search(r"flock -n .* \.venv/bin/dicomflow run --config \S+", command)
    assert command.endswith(">> /var/log/dicomflow/run.log 2>&1")
    subprocess.run(["bash", "-n", "-c", command], check=True)


def test_run_example_is_a_valid_run_config():
    import dataclasses

    from pipelines.run import RunConfig

    config = RunConfig.from_mapping(yaml.safe_load((DEPLOY / "run.example.yaml").read_text()))
    assert config.key_file and config.key_file.startswith("gs://") and config.key_env is None
    beam = beam_flags()
    for args in (config.ingest.beam_args, config.score.beam_args):
        for arg in args:
            assert arg.split("=")[0] in beam, arg
    dataclasses.replace(config.train.config, data="gs://b/i", model_dir="gs://b/m").validate()
    assert config.train.launcher == "vertex" and config.train.vertex is not None
    assert config.train.vertex.accelerator_type == "NVIDIA_TESLA_T4"


def test_airflow_dags_import_in_a_real_airflow(tmp_path):
    if not AIRFLOW_PYTHON.exists():
        pytest.fail(
            f"{AIRFLOW_PYTHON} is missing: run `make airflow-venv` (or `make test`, which makes it)"
        )
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    result = subprocess.run(
        [str(AIRFLOW_PYTHON), "-c", _DAG_CHECK, str(DEPLOY / "airflow" / "dicomflow_dag.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Airflow logs to stdout too; the report is its own line.
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("REPORT ")]
    report = json.loads(line.removeprefix("REPORT "))
    assert report["airflow"] == "3.3.2"
    assert report["errors"] == {}
    dags = report["dags"]
    assert set(dags) == {"dicomflow_run", "dicomflow_workflows"}
    for dag in dags.values():
        assert dag["schedule"] == "0 2 * * *" and dag["paused"] and not dag["catchup"]
        assert dag["max_active_runs"] == 1
    run, wf = dags["dicomflow_run"], dags["dicomflow_workflows"]
    assert run["tasks"] == [["dicomflow_run", []]]
    assert run["skip_on_exit_code"] == [3]  # pipelines/run.py: another run holds the lock
    assert run["rendered"] == [
        "/opt/dicomflow/bin/dicomflow run --config gs://b/run.yaml",
        "/opt/dicomflow/bin/dicomflow run --config gs://c/other.yaml --from-stage train",
    ]
    assert run["rejected"] == ["config", "from_stage"]
    assert wf["tasks"] == [["run_workflow", []]]
    (command,) = wf["rendered"]
    assert command.startswith("state=$(gcloud workflows run dicomflow --project=p --location=r")
    assert """--data='{"run_date": "2026-11-21"}'""" in command
    assert command.endswith('test "$state" = SUCCEEDED')


# Runs in the Airflow virtualenv: parses the DAG file as the scheduler does and reports.
_DAG_CHECK = r"""
import json, sys
import airflow
from airflow.models import DagBag
from airflow.sdk.definitions.param import ParamValidationError

bag = DagBag(dag_folder=sys.argv[1])
report = {"airflow": airflow.__version__, "errors": dict(bag.import_errors), "dags": {}}
variables = {"value": {"dicomflow_bin": "/opt/dicomflow/bin/dicomflow",
                       "dicomflow_config": "gs://b/run.yaml",
                       "dicomflow_project": "p", "dicomflow_region": "r"}}
for dag_id, dag in bag.dags.items():
    env = dag.get_template_env()
    cases = [{}, {"config": "gs://c/other.yaml", "from_stage": "train"}] if dag.params else [{}]
    rendered = []
    for case in cases:
        params = {k: case.get(k, dag.params[k]) for k in dag.params}
        for task in dag.tasks:
            rendered.append(env.from_string(task.bash_command).render(
                params=params, var=variables, ds="2026-11-21"))
    rejected = []
    for name, bad in (("config", "x; rm -rf /"), ("from_stage", "deploy")):
        if name in dag.params:
            try:
                dag.params.get_param(name).resolve(bad)
            except ParamValidationError:
                rejected.append(name)
    report["dags"][dag_id] = {
        "schedule": dag.schedule, "paused": dag.is_paused_upon_creation,
        "catchup": dag.catchup, "max_active_runs": dag.max_active_runs,
        "tasks": [[t.task_id, sorted(t.upstream_task_ids)] for t in dag.tasks],
        "skip_on_exit_code": [list(t.skip_on_exit_code) for t in dag.tasks][0],
        "rendered": rendered, "rejected": rejected,
    }
print("REPORT " + json.dumps(report))
"""


# --- runbook --------------------------------------------------------------------------------


def test_deploy_page_names_files_that_exist():
    page = (ROOT / "docs" / "deploy.md").read_text()
    assert page.startswith("# Deploy\n")
    paths = set(re.findall(r"\bdeploy/[\w./-]+\w", page))
    assert {
        "deploy/worker.Dockerfile",
        "deploy/flex_main.py",
        "deploy/cron/dicomflow.cron",
    } <= paths
    missing = sorted(p for p in paths if not (ROOT / p).exists() and "env.yaml" not in p)
    assert not missing, missing
