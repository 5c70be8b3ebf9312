"""Background jobs: one model (`jobs` rows) for every kind of long work.

A kind is a function registered with `@job("kind")`; it gets a `JobContext` (parameters,
database sessions, storage, settings, `progress`, `log`, `cancelled`) and returns its result as
JSON. Routes call `create_job`, commit, and `submit` the id to the runner on `app.state.jobs`
(`make_runner`: threads or Celery, per `settings.jobs`), which does the rest. The process
running a job keeps a lease on it with a heartbeat; a job whose process died is run again, or
failed after its second run, once `job_lease_s` has passed (cloud/jobs/core.py).

Kinds: `import` (cloud/jobs/imports.py), `assist` (cloud/jobs/assist.py) and `train`
(cloud/jobs/train.py), each imported below so that both the service and every worker know it.
"""

# Imported for their `@job` registrations (kind modules import `job` from cloud.jobs.core).
from cloud.jobs import assist, imports, train
from cloud.jobs.core import (
    JobContext,
    JobEnv,
    JobQueueError,
    create_job,
    job,
    kinds,
    request_cancel,
    run_job,
)
from cloud.jobs.runners import JobRunner, make_runner

__all__ = [
    "JobContext",
    "JobEnv",
    "JobQueueError",
    "JobRunner",
    "assist",
    "create_job",
    "imports",
    "job",
    "kinds",
    "make_runner",
    "request_cancel",
    "run_job",
    "train",
]
