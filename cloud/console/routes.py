"""The labelling console: server-rendered pages. Their buttons and keys call the JSON API
(cloud/api/routes/labels.py) with the CSRF token each page carries in a meta tag."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import select
from starlette.datastructures import QueryParams

from cloud import labelling, spectrogram
from cloud.api.deps import DbDep, Login, SettingsDep, current_login
from cloud.api.routes import auth
from cloud.api.routes import events as events_api
from cloud.api.routes import registry as registry_api
from cloud.api.routes import rollouts as rollouts_api
from cloud.api.routes.jobs import JobId, log_tail
from cloud.api.routes.labels import decode_cursor, encode_cursor
from cloud.core.security import new_token, same
from cloud.jobs.train import ARCHITECTURES, TrainParams
from cloud.splits import PERCENT, SPLITS
from cloud.tables import Clip, Device, Job, ModelVersion, User
from models.evaluate import EDGE_HOP_S
from models.frontend import FrontendConfig

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
LOGIN_CSRF_COOKIE = "soundwarden_login_csrf"
PAGE_SIZE = 50
EVENTS_PAGE_SIZE = 100
JOBS_PAGE_SIZE = 50
JOB_LOG_LINES = 200
SPEEDS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
N_FFTS = (256, 512, 1024, 2048)
OVERLAPS = (0.0, 0.5, 0.75, 0.9)
# Assistance scores 1 s windows at the edge's hop (cloud/jobs/assist.py): where each of a
# clip's window_scores sits on the timeline.
_FEATURES = FrontendConfig()
WINDOW_S = _FEATURES.window_samples / _FEATURES.sample_rate

router = APIRouter(include_in_schema=False)
# Where a paged list (events, jobs) starts: bounded like the API's, so a made-up URL gets a 422.
PageOffset = Annotated[int, Query(ge=0, le=events_api.MAX_OFFSET)]


def page_login(request: Request, db: DbDep) -> Login:
    """The signed-in user, or a redirect to the sign-in page that comes back here after."""
    try:
        return current_login(request, db)
    except HTTPException:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(
            status.HTTP_303_SEE_OTHER,
            "sign in first",
            headers={"Location": "/login?" + urlencode({"next": here})},
        ) from None


PageLogin = Annotated[Login, Depends(page_login)]


def _render(
    request: Request, template: str, login: Login | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request,
        template,
        {
            "me": login.user if login else None,
            "csrf": login.session.csrf_token if login else "",
            "query": "",
            **context,
        },
        status_code=status_code,
    )


def _local(target: str) -> str:
    """Only paths on this site are followed after sign-in (no open redirect)."""
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


def _login_form(
    request: Request, settings: SettingsDep, target: str, error: str = "", status_code: int = 200
) -> HTMLResponse:
    # Sign-in CSRF (a forged form signing the victim into the attacker's account): the form
    # must echo a random value that only this site's cookie holds (double submit).
    token = new_token()
    response = _render(
        request,
        "login.html",
        None,
        status_code,
        next=_local(target),
        form_token=token,
        error=error,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=settings.secure_cookies,
        path="/login",
    )
    return response


@router.get("/login")
def login_page(request: Request, settings: SettingsDep, next: str = "/") -> HTMLResponse:
    return _login_form(request, settings, next)


@router.post("/login")
def login_submit(
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not same(cookie, csrf_token):
        return _login_form(
            request, settings, next, "The form had expired; please sign in again.", 403
        )
    try:
        credentials = auth.Credentials(username=username, password=password)
    except ValidationError:
        return _login_form(request, settings, next, "Enter your user name and password.", 422)
    redirect = RedirectResponse(_local(next), status.HTTP_303_SEE_OTHER)
    try:
        # The API's sign-in (rate limit, session row, cookie) sets its cookie on the redirect.
        auth.login(credentials, request, redirect, db, settings)
    except HTTPException as exc:
        return _login_form(request, settings, next, str(exc.detail), exc.status_code)
    redirect.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return redirect


@dataclass(frozen=True)
class QueueView:
    """The queue filters as the console's forms and links carry them."""

    filter: labelling.QueueFilter
    values: dict[str, str]  # what the filter form shows
    query: str  # the filters as a query string, passed from page to page
    errors: list[str]

    @property
    def narrowed(self) -> bool:
        """Filters beyond the label are set."""
        return any(value for name, value in self.values.items() if name != "label")


def _queue_view(params: QueryParams) -> QueueView:
    values = {
        name: params.get(name, "").strip()
        for name in ("label", "device", "device_label", "min_score", "max_score", "since", "until")
    }
    errors: list[str] = []

    def number(name: str) -> float | None:
        if not values[name]:
            return None
        try:
            value = float(values[name])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            errors.append(f"{name.replace('_', ' ')}: {values[name]!r} is not a number")
            return None
        return value

    def day(name: str, days_after: int = 0) -> datetime | None:
        try:
            parsed = date.fromisoformat(values[name]) if values[name] else None
        except ValueError:
            errors.append(f"{name}: {values[name]!r} is not a date (YYYY-MM-DD)")
            return None
        if parsed is None:
            return None
        return datetime(parsed.year, parsed.month, parsed.day, tzinfo=UTC) + timedelta(days_after)

    f = labelling.QueueFilter(
        label=values["label"] or None,
        device=values["device"] or None,
        device_label=values["device_label"] or None,
        min_score=number("min_score"),
        max_score=number("max_score"),
        since=day("since"),
        until=day("until", days_after=1),  # the form's "until" day is included
    )
    query = urlencode({k: v for k, v in values.items() if v})
    return QueueView(f, values, query, errors)


@router.get("/")
def queue_page(request: Request, login: PageLogin, db: DbDep) -> HTMLResponse:
    view = _queue_view(request.query_params)
    after = request.query_params.get("after")
    clips = labelling.queue_page(
        db, view.filter, decode_cursor(after) if after else None, PAGE_SIZE + 1
    )
    more = len(clips) > PAGE_SIZE
    clips = clips[:PAGE_SIZE]
    return _render(
        request,
        "queue.html",
        login,
        clips=clips,
        view=view,
        query=view.query,
        labels=labelling.label_counts(db),
        devices=db.scalars(select(Device.id).order_by(Device.id)).all(),
        next_after=encode_cursor(labelling.QueueKey.of(clips[-1])) if more else None,
        paged=after is not None,
    )


def _clip(db: DbDep, clip_id: str) -> Clip:
    clip = db.get(Clip, clip_id)
    if clip is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no clip {clip_id!r}")
    return clip


@router.get("/clips/{clip_id}")
def clip_page(clip_id: str, request: Request, login: PageLogin, db: DbDep) -> HTMLResponse:
    clip = _clip(db, clip_id)
    view = _queue_view(request.query_params)
    return _render(
        request,
        "clip.html",
        login,
        clip=clip,
        query=view.query,
        labels=labelling.label_counts(db),
        scores=json.dumps(clip.window_scores or []),
        window_s=WINDOW_S,
        hop_s=EDGE_HOP_S,
        speeds=SPEEDS,
        scales=("mel", "linear"),
        windows=tuple(spectrogram.WINDOWS),
        n_ffts=N_FFTS,
        overlaps=OVERLAPS,
    )


def _step(clip_id: str, request: Request, db: DbDep, forward: bool) -> RedirectResponse:
    """To the clip after (or before) this one in the queue; past either end, the queue."""
    view = _queue_view(request.query_params)
    found = labelling.neighbour(db, view.filter, _clip(db, clip_id), forward)
    suffix = f"?{view.query}" if view.query else ""
    target = f"/clips/{found.id}{suffix}" if found else f"/{suffix}"
    return RedirectResponse(target, status.HTTP_303_SEE_OTHER)


@router.get("/clips/{clip_id}/next")
def next_clip(clip_id: str, request: Request, _: PageLogin, db: DbDep) -> RedirectResponse:
    return _step(clip_id, request, db, forward=True)


@router.get("/clips/{clip_id}/prev")
def previous_clip(clip_id: str, request: Request, _: PageLogin, db: DbDep) -> RedirectResponse:
    return _step(clip_id, request, db, forward=False)


@router.get("/labels")
def labels_page(request: Request, login: PageLogin, db: DbDep) -> HTMLResponse:
    return _render(request, "labels.html", login, labels=labelling.label_counts(db))


@router.get("/stats")
def stats_page(request: Request, login: PageLogin, db: DbDep) -> HTMLResponse:
    shares = dict(zip(SPLITS, PERCENT, strict=True))
    return _render(
        request,
        "stats.html",
        login,
        stats=labelling.dataset_stats(db),
        splits=SPLITS,
        shares=shares,
    )


@router.get("/events")
def events_page(
    request: Request, login: PageLogin, db: DbDep, offset: PageOffset = 0
) -> HTMLResponse:
    events = events_api.events_page(db, EVENTS_PAGE_SIZE, offset)
    ids = {e.clip_id for e in events if e.clip_id}
    clips = {c.id: c for c in db.scalars(select(Clip).where(Clip.id.in_(ids)))} if ids else {}
    return _render(
        request,
        "events.html",
        login,
        events=events,
        clips=clips,
        offset=offset,
        page_size=EVENTS_PAGE_SIZE,
    )


@router.get("/jobs")
def jobs_page(
    request: Request,
    login: PageLogin,
    db: DbDep,
    offset: PageOffset = 0,
) -> HTMLResponse:
    jobs = db.execute(
        select(Job, User.username)
        .outerjoin(User, Job.created_by == User.id)
        .order_by(Job.id.desc())
        .offset(offset)
        .limit(JOBS_PAGE_SIZE)
    ).all()
    return _render(
        request,
        "jobs.html",
        login,
        jobs=jobs,
        offset=offset,
        page_size=JOBS_PAGE_SIZE,
        labels=labelling.label_counts(db),
        models=db.scalars(select(ModelVersion.name).distinct().order_by(ModelVersion.name)).all(),
        architectures=ARCHITECTURES,
        defaults=TrainParams(),
        fields=TrainParams.model_json_schema()["properties"],
    )


def _job(db: DbDep, job_id: int) -> tuple[Job, str | None]:
    found = db.execute(
        select(Job, User.username)
        .outerjoin(User, Job.created_by == User.id)
        .where(Job.id == job_id)
    ).first()
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    job, username = found
    return job, username


def _has_report(job: Job) -> bool:
    return job.kind == "train" and job.state == "succeeded" and "comparison" in (job.result or {})


@router.get("/jobs/{job_id}")
def job_page(job_id: JobId, request: Request, login: PageLogin, db: DbDep) -> HTMLResponse:
    job, username = _job(db, job_id)
    return _render(
        request,
        "job.html",
        login,
        job=job,
        username=username,
        log_tail=log_tail(job.log, JOB_LOG_LINES),
        log_lines=JOB_LOG_LINES,
        params=json.dumps(job.params, indent=2),
        result=json.dumps(job.result, indent=2) if job.result is not None else None,
        can_cancel=job.state in ("queued", "running")
        and (login.user.role == "admin" or job.created_by == login.user.id),
        report=_has_report(job),
    )


# What a training job's plots (drawn by models/training) show; others are shown by file name.
PLOT_CAPTIONS = {
    "training_curves.png": "Training curves: loss per epoch, and validation ROC-AUC",
    "val_confusion.png": "Confusion matrix: validation windows, INT8 model, at its threshold",
    "val_roc_pr.png": "ROC and precision-recall curves: validation windows, INT8 model",
}
FALSE_ALARMS = "False alarms per hour of negative audio"  # the one line where less is better


@dataclass(frozen=True)
class MetricRow:
    """One line of the side-by-side comparison; `deployed` is None without a deployed model,
    `interval` the 95% interval of new minus deployed where the job measured one."""

    name: str
    new: float
    deployed: float | None
    interval: tuple[float, float] | None = None
    single_group: bool = False  # every test clip of a label from one group: no interval

    @property
    def verdict(self) -> str | None:
        """'better', 'worse', 'same', 'within noise' when the interval holds no change at all,
        or 'untested' when one recording group per label leaves nothing to redraw; None with
        nothing to compare."""
        if self.deployed is None:
            return None
        if self.new == self.deployed:
            return "same"
        if self.single_group:
            return "untested: one recording group per label"
        if self.interval is not None and self.interval[0] <= 0 <= self.interval[1]:
            return "within noise"
        return "better" if (self.new > self.deployed) != (self.name == FALSE_ALARMS) else "worse"


def _metric_row(
    name: str, new: float, deployed: float | None, difference: dict[str, Any] | None
) -> MetricRow:
    """A row, with the paired difference's interval where the job measured one."""
    if difference is None:
        return MetricRow(name, new, deployed)
    if difference["low"] is None:
        return MetricRow(name, new, deployed, single_group=True)
    return MetricRow(name, new, deployed, (difference["low"], difference["high"]))


def _headline(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers the report compares, from a summary `cloud.jobs.train` keeps of a model on
    the held-out test clips."""
    return {
        "Clip ROC-AUC": summary["clip"]["roc_auc"],
        "Clip accuracy": summary["clip"]["accuracy"],
        "Clip macro F1": summary["clip"]["macro_f1"],
        "Window ROC-AUC": summary["window_roc_auc"],
        FALSE_ALARMS: summary["false_alarms_per_hour"],
    }


@router.get("/jobs/{job_id}/report")
def training_report_page(
    job_id: JobId, request: Request, login: PageLogin, db: DbDep
) -> HTMLResponse:
    job, username = _job(db, job_id)
    if not _has_report(job):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"job {job_id} is not a finished training job"
        )
    assert job.result is not None  # _has_report
    comparison = job.result["comparison"]
    new, deployed = comparison["new"], comparison.get("deployed")
    before = _headline(deployed) if deployed else {}
    difference = comparison.get("difference") or {}
    measured = {
        name: difference[key]
        for name, key in (("Clip ROC-AUC", "clip_roc_auc"), ("Window ROC-AUC", "window_roc_auc"))
        if key in difference
    }
    return _render(
        request,
        "report.html",
        login,
        job=job,
        username=username,
        result=job.result,
        # per_class keeps the model's label order, which is the confusion matrices' too.
        labels=list(new["per_class"]),
        splits=SPLITS,
        new=new,
        deployed=deployed,
        rows=[
            _metric_row(name, value, before.get(name), measured.get(name))
            for name, value in _headline(new).items()
        ],
        plots=[(name, PLOT_CAPTIONS.get(name, name)) for name in job.result["plots"]],
        architectures=ARCHITECTURES,
    )


# --- models and rollouts: pages over the registry and rollouts API ---------------------------

ROLLOUTS_PAGE_SIZE = 50
LATEST_ROLLOUTS = 5


@router.get("/models")
def models_page(request: Request, login: PageLogin, db: DbDep) -> HTMLResponse:
    groups = select(Device.group).where(Device.group.is_not(None)).distinct().order_by(Device.group)
    return _render(
        request,
        "models.html",
        login,
        models=registry_api.list_models(login.user, db),
        rollouts=rollouts_api.list_rollouts(login.user, db, LATEST_ROLLOUTS, 0),
        groups=db.scalars(groups).all(),
        stages=", ".join(rollouts_api.RolloutRequest().stages),
    )


@router.get("/rollouts")
def rollouts_page(
    request: Request,
    login: PageLogin,
    db: DbDep,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> HTMLResponse:
    return _render(
        request,
        "rollouts.html",
        login,
        rollouts=rollouts_api.list_rollouts(login.user, db, ROLLOUTS_PAGE_SIZE, offset),
        offset=offset,
        page_size=ROLLOUTS_PAGE_SIZE,
    )


@router.get("/rollouts/{rollout_id}")
def rollout_page(
    rollout_id: rollouts_api.RolloutId, request: Request, login: PageLogin, db: DbDep
) -> HTMLResponse:
    rollout = rollouts_api.get_rollout(rollout_id, login.user, db)
    return _render(request, "rollout.html", login, rollout=rollout)
