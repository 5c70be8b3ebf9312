"""The Celery side of the job runner: `celery -A cloud.jobs.celery_app worker`, or
`soundwarden-cloud worker`, runs `soundwarden.run_job(job_id)` tasks with the settings of its own
environment (SOUNDWARDEN_*), which must name the service's database and storage.

The task carries only the job id; parameters, progress and results live in the jobs table, so
no result backend is used and a worker needs nothing the service does not also see. A worker
keeps the lease of the job it runs with a heartbeat every `job_lease_s / 4` of its own settings:
give it the service's value.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from celery import Celery

from cloud.core.config import Settings
from cloud.core.db import make_engine, make_sessionmaker
from cloud.jobs import JobEnv, run_job
from cloud.jobs.runners import TASK_NAME
from cloud.storage import make_storage

QUEUE = "soundwarden-jobs"


def make_celery(settings: Settings) -> Any:
    app = Celery("soundwarden", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE,  # not `celery`: the Redis database may serve other apps
        task_ignore_result=True,
        # Jobs run for minutes to hours: a worker takes the next one only when it is free,
        # instead of reserving a backlog while another worker idles. A worker that dies does not
        # wait for Redis to re-send its unacknowledged task (after an hour): its heartbeat stops,
        # and the service's reaper queues the job again and sends a new task within a lease
        # (cloud/jobs/core.py). The late redelivery then finds the job taken or done and stops.
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )
    return app


@cache
def _env() -> JobEnv:
    # Made on first use, inside the worker process that runs tasks (after any fork).
    settings = Settings()
    return JobEnv(make_sessionmaker(make_engine(settings.db_url)), make_storage(settings), settings)


def _run(job_id: int) -> None:
    run_job(job_id, _env())


app = make_celery(Settings())
run_job_task = app.task(name=TASK_NAME)(_run)
