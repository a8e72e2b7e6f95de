"""Airflow DAGs for dicomflow (Cloud Composer or any Airflow 3): the scheduled chain.

Two variants; enable the one that fits (both start paused):

- ``dicomflow_run``: ``dicomflow run --config run.yaml`` (ingest → train → score, lock and
  incremental state under the output root) on a worker that can run the ``dicomflow``
  command. Beam and TensorFlow do not fit into Airflow's own environment, so install
  dicomflow into a virtualenv of its own on the workers and point the Airflow Variable
  ``dicomflow_bin`` at its ``bin/dicomflow``. With ``--runner DataflowRunner`` in run.yaml
  the worker only submits and watches the jobs.
- ``dicomflow_workflows``: runs the Cloud Workflows chain (``deploy/workflows/pipeline.yaml``:
  Dataflow flex templates and a Vertex AI custom job) with ``gcloud workflows run`` and
  needs nothing but the gcloud CLI on the worker (Composer has it).

Only the core ``apache-airflow`` install is needed: BashOperator comes from the standard
provider, which ships with it. Settings come from Airflow Variables, read when a task
runs, never while the file is parsed:

    dicomflow_config    run.yaml (local path or gs://) for dicomflow_run
    dicomflow_bin       the dicomflow command (default: dicomflow on PATH)
    dicomflow_project   project of the workflow (dicomflow_workflows)
    dicomflow_region    region of the workflow (dicomflow_workflows)
    dicomflow_workflow  workflow name (default: dicomflow)
"""

from datetime import UTC, datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param

SCHEDULE = "0 2 * * *"  # nightly at 02:00 UTC
START = datetime(2026, 1, 1, tzinfo=UTC)
# `dicomflow run` exits 3 when another run holds the lock: that run is not a failure of this
# one, so the task is skipped.
LOCK_HELD = 3

DEFAULT_ARGS = {
    "owner": "dicomflow",
    # A failed run resumes where it stopped (same run id, finished stages kept).
    "retries": 1,
    "retry_delay": timedelta(minutes=30),
}

RUN_COMMAND = (
    "{{ var.value.get('dicomflow_bin', 'dicomflow') }} run"
    " --config {{ params.config or var.value.dicomflow_config }}"
    "{% if params.from_stage %} --from-stage {{ params.from_stage }}{% endif %}"
)

WORKFLOW_COMMAND = (
    "state=$(gcloud workflows run {{ var.value.get('dicomflow_workflow', 'dicomflow') }}"
    " --project={{ var.value.dicomflow_project }} --location={{ var.value.dicomflow_region }}"
    """ --data='{"run_date": "{{ ds }}"}' --format='value(state)')"""
    ' && echo "workflow execution: $state" && test "$state" = SUCCEEDED'
)

with DAG(
    dag_id="dicomflow_run",
    description="dicomflow run: ingest → train → score, incremental, under one lock",
    schedule=SCHEDULE,
    start_date=START,
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,
    default_args=DEFAULT_ARGS,
    tags=["dicomflow"],
    params={
        "config": Param(
            None,
            type=["null", "string"],
            # A path or URI only: the value lands on a shell command line.
            pattern=r"^[A-Za-z0-9_./:@=+-]+$",
            description="run.yaml to use instead of the dicomflow_config Variable",
        ),
        "from_stage": Param(
            None,
            type=["null", "string"],
            enum=[None, "ingest", "train", "score"],
            description="re-run this stage and those after it",
        ),
    },
):
    BashOperator(
        task_id="dicomflow_run",
        bash_command=RUN_COMMAND,
        env={"PYTHONUNBUFFERED": "1"},
        append_env=True,
        skip_on_exit_code=LOCK_HELD,
        # Ingest of a large export on Dataflow takes hours; the run's own lock goes stale
        # after lock_stale_minutes (default 360), so keep the two in step.
        execution_timeout=timedelta(hours=6),
    )

with DAG(
    dag_id="dicomflow_workflows",
    description="Cloud Workflows: ingest flex template → Vertex AI training → score flex template",
    schedule=SCHEDULE,
    start_date=START,
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,
    default_args=DEFAULT_ARGS,
    tags=["dicomflow"],
):
    BashOperator(
        task_id="run_workflow",
        bash_command=WORKFLOW_COMMAND,
        execution_timeout=timedelta(hours=12),
    )
