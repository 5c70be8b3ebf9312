"""The console's pages as a browser without JavaScript sees them: sign-in, redirects, content.
(tests/cloud/test_console_browser.py drives the keyboard in a real browser.)"""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from cloud.api.deps import SESSION_COOKIE
from cloud.console.routes import LOGIN_CSRF_COOKIE
from cloud.jobs import create_job
from cloud.splits import SPLITS
from cloud.tables import Event, User
from tests.bundles import SHIPPED_VERSION
from tests.cloud.clipdata import T0, seed
from tests.cloud.conftest import PASSWORD, add_user
from tests.cloud.jobutil import seed_training_clips, wait_job

PAGES = ("/", "/clips/c1", "/labels", "/stats", "/events", "/jobs")


def form_token(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def test_pages_send_strangers_to_sign_in_and_back(app: FastAPI) -> None:
    add_user(app, "lee", "labeller")
    seed(app, {"clip_id": "c1"})
    browser = TestClient(app)
    for path in PAGES:
        response = browser.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=")

    form = browser.get("/login", params={"next": "/clips/c1?device=pi-1"})
    assert form.status_code == 200 and LOGIN_CSRF_COOKIE in form.cookies
    fields = {"username": "lee", "password": PASSWORD, "next": "/clips/c1?device=pi-1"}

    # A form posted from elsewhere lacks the cookie's twin: refused, nobody signed in.
    forged = TestClient(app).post("/login", data={**fields, "csrf_token": "guess"})
    assert forged.status_code == 403 and SESSION_COOKIE not in forged.cookies

    wrong = browser.post(
        "/login", data={**fields, "password": "not it!!", "csrf_token": form_token(form.text)}
    )
    assert wrong.status_code == 401 and "wrong user name or password" in wrong.text

    signed = browser.post(
        "/login", data={**fields, "csrf_token": form_token(wrong.text)}, follow_redirects=False
    )
    assert signed.status_code == 303
    assert signed.headers["location"] == "/clips/c1?device=pi-1"
    assert SESSION_COOKIE in signed.cookies
    for path in PAGES:
        assert browser.get(path).status_code == 200, path


def test_sign_in_never_redirects_off_site(app: FastAPI) -> None:
    add_user(app, "lee", "labeller")
    browser = TestClient(app)
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        token = form_token(browser.get("/login").text)
        fields = {"username": "lee", "password": PASSWORD, "csrf_token": token, "next": target}
        response = browser.post("/login", data=fields, follow_redirects=False)
        assert response.headers["location"] == "/", target


def test_queue_and_clip_pages_show_what_the_labeller_needs(
    app: FastAPI, labeller: TestClient
) -> None:
    seed(
        app,
        {"clip_id": "c1", "uncertainty": 0.1, "suggestion": "cry", "suggestion_score": 0.55},
        {"clip_id": "c2", "minutes": 1, "uncertainty": 0.2, "window_scores": [0.1, 0.9]},
        {"clip_id": "c3", "minutes": 2, "device_label": "glass"},
    )
    queue = labeller.get("/").text
    assert queue.index('href="/clips/c1"') < queue.index('href="/clips/c2"')
    assert queue.index('href="/clips/c2"') < queue.index('href="/clips/c3"')
    narrowed = labeller.get("/", params={"device_label": "glass", "min_score": ""}).text
    assert 'href="/clips/c3?device_label=glass"' in narrowed and "/clips/c1" not in narrowed
    bad = labeller.get("/", params={"min_score": "lots", "since": "yesterday"}).text
    assert "is not a number" in bad and "is not a date" in bad

    page = labeller.get("/clips/c1").text
    token = labeller.headers["X-CSRF-Token"]
    assert f'<meta name="csrf-token" content="{token}">' in page
    assert 'src="/api/v1/clips/c1/audio"' in page
    assert 'src="/api/v1/clips/c1/spectrogram.png"' in page
    assert "suggests <strong>cry</strong>" in page and "<kbd>a</kbd>" in page
    assert "<kbd>1</kbd> cry" in page
    assert labeller.get("/clips/nope").status_code == 404

    # Next and previous follow the queue and keep its filters; past the end, the queue.
    step = labeller.get("/clips/c1/next", follow_redirects=False)
    assert step.headers["location"] == "/clips/c2"
    step = labeller.get("/clips/c2/prev", params={"device_label": "cry"}, follow_redirects=False)
    assert step.headers["location"] == "/clips/c1?device_label=cry"
    step = labeller.get("/clips/c3/next", follow_redirects=False)
    assert step.headers["location"] == "/"
    labeller.post("/api/v1/labels/apply", json={"clip_ids": ["c1", "c2", "c3"], "label": "cry"})
    assert "Nothing left to label" in labeller.get("/").text


def test_labels_stats_and_events_pages(
    app: FastAPI, admin: TestClient, labeller: TestClient
) -> None:
    seed(app, {"clip_id": "c1", "label": "cry"}, {"clip_id": "c2"})
    with app.state.sessions() as db:
        for n, clip_id in enumerate(("c1", "c2", "missing", None)):
            db.add(
                Event(
                    device_id="pi-1",
                    episode_id=f"e{n}",
                    type="end",
                    label="cry",
                    score=0.9,
                    at=T0,
                    clip_id=clip_id,
                    payload={},
                )
            )
        db.commit()
    assert 'class="delete-label" data-label="cry" disabled' in admin.get("/labels").text
    assert 'id="new-label"' not in labeller.get("/labels").text

    assert 'id="unlabelled">1<' in labeller.get("/stats").text

    events = labeller.get("/events").text
    buttons = re.findall(r'class="false-positive" data-clip="([^"]+)"', events)
    assert buttons == ["c2", "c1"]  # newest first; equal times: latest received first
    assert "missing (not stored)" in events
    labeller.post("/api/v1/clips/c2/false-positive")
    events = labeller.get("/events").text
    assert re.findall(r'data-clip="([^"]+)"', events) == ["c1"]
    assert "false positive (other)" in events


def table(page: str, table_id: str) -> list[list[str]]:
    """The text of each row's cells in the table with this id."""
    found = re.search(rf'<table[^>]* id="{table_id}">(.*?)</table>', page, re.S)
    assert found, table_id
    return [
        [
            re.sub(r"<[^>]+>|\s+", " ", cell).strip()
            for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)
        ]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", found.group(1), re.S)
    ]


def test_jobs_pages_list_jobs_offer_training_and_say_why_one_failed(
    app: FastAPI, admin: TestClient, labeller: TestClient
) -> None:
    seed_training_clips(app, ("train",))  # too few labels for an honest split: it fails
    failed = admin.post("/api/v1/jobs/train", json={"epochs": 1}).json()["id"]
    assert wait_job(admin, failed)["state"] == "failed"
    with app.state.sessions() as db:
        lee = db.scalar(select(User).where(User.username == "lee"))
        queued = create_job(db, "train", {"epochs": 1}, lee).id  # never handed to a runner
        db.commit()

    jobs = admin.get("/jobs").text
    assert '<a href="/jobs">Jobs</a>' in jobs
    rows = table(jobs, "jobs")
    assert [row[:3] + row[-1:] for row in rows[1:]] == [
        [str(queued), "train", "queued", "lee"],
        [str(failed), "train", "failed", "ada"],
    ]
    assert "none in val/cry" in rows[2][4]
    # Every network the API accepts is on the form, and the form's defaults are the API's.
    for architecture in ("compact_cnn", "conv_attention", "yolov8n_cls", "yolov8s_cls"):
        assert f'<option value="{architecture}"' in jobs
    assert 'name="epochs" type="number" value="20" min="1" max="500"' in jobs
    assert 'name="positive" value="cry" checked' in jobs
    assert 'id="train"' not in labeller.get("/jobs").text

    page = labeller.get(f"/jobs/{failed}").text
    assert "Why it failed" in page and "none in val/cry" in page
    assert "Traceback" in page and "ValueError" in page  # the log says where
    assert 'id="job-cancel"' not in page and 'data-ended="yes"' in page
    assert 'id="report-link"' not in page
    assert labeller.get(f"/jobs/{failed}/report").status_code == 404
    assert labeller.get("/jobs/999999").status_code == 404

    # Cancelling is for the job's creator and admins, while it has not ended.
    assert 'id="job-cancel"' in labeller.get(f"/jobs/{queued}").text
    assert 'id="job-cancel"' in admin.get(f"/jobs/{queued}").text
    admin.post(f"/api/v1/jobs/{queued}/cancel")
    page = labeller.get(f"/jobs/{queued}").text
    assert 'id="job-cancel"' not in page and "cancelled before it started" in page


def test_a_change_inside_its_interval_is_called_noise_not_better() -> None:
    from cloud.console.routes import FALSE_ALARMS, MetricRow

    assert MetricRow("Clip ROC-AUC", 0.95, 0.90, (-0.02, 0.11)).verdict == "within noise"
    assert MetricRow("Clip ROC-AUC", 0.95, 0.90, (0.01, 0.09)).verdict == "better"
    assert MetricRow("Clip ROC-AUC", 0.85, 0.90).verdict == "worse"
    assert MetricRow(FALSE_ALARMS, 2.0, 5.0).verdict == "better"  # fewer false alarms
    assert MetricRow("Clip accuracy", 0.9, 0.9).verdict == "same"
    assert MetricRow("Clip accuracy", 0.9, None).verdict is None
    one_group = MetricRow("Clip ROC-AUC", 0.5, 1.0, single_group=True)
    assert one_group.verdict == "untested: one recording group per label"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # training is the slow part
def test_training_report_shows_the_metrics_the_comparison_and_the_plots(
    app: FastAPI, admin: TestClient, labeller: TestClient
) -> None:
    seed_training_clips(app, SPLITS)
    job_id = admin.post("/api/v1/jobs/train", json={"epochs": 1}).json()["id"]
    job = wait_job(admin, job_id, timeout_s=300)
    assert job["state"] == "succeeded", job["message"]
    result = job["result"]
    new, deployed = result["comparison"]["new"], result["comparison"]["deployed"]
    assert 'id="report-link"' in labeller.get(f"/jobs/{job_id}").text

    page = labeller.get(f"/jobs/{job_id}/report").text
    assert f"cry-detector {result['model']['version']}" in page
    assert f'id="threshold">{result["threshold"]:.4f}<' in page
    assert table(page, "counts")[1:] == [["cry", "2", "2", "2"], ["other", "2", "2", "2"]]

    def f(value: float) -> str:
        return f"{value:.3f}"

    rows = table(page, "comparison")
    assert rows[0] == [
        "Test clips",
        f"New {result['model']['version']}",
        f"Deployed {SHIPPED_VERSION}",
        "Change",
    ]

    def headline(s: dict[str, Any]) -> list[float]:
        clip = s["clip"]
        return [
            *(clip[m] for m in ("roc_auc", "accuracy", "macro_f1")),
            s["window_roc_auc"],
            s["false_alarms_per_hour"],
        ]

    names = ["Clip ROC-AUC", "Clip accuracy", "Clip macro F1", "Window ROC-AUC"]
    names += ["False alarms per hour of negative audio"]
    assert [row[:3] for row in rows[1:6]] == [
        [name, f(n), f(d)]
        for name, n, d in zip(names, headline(new), headline(deployed), strict=True)
    ]
    # Every test clip of a label comes from one device group: nothing to redraw, so the
    # ROC-AUC changes are not called better or worse.
    difference = result["comparison"]["difference"]
    for row, level in ((rows[1], "clip_roc_auc"), (rows[4], "window_roc_auc")):
        assert difference[level]["low"] is None
        assert row[3] == "same" or row[3].endswith("untested: one recording group per label")
    baseline = new["majority_baseline"]
    assert rows[6] == [
        f"Always guessing {baseline['predicts']} (accuracy / macro F1)",
        f"{f(baseline['accuracy'])} / {f(baseline['macro_f1'])}",
    ]

    per_class = table(page, "per-class")
    for row, label in zip(per_class[1:], ("cry", "other"), strict=True):
        n, d = new["per_class"][label], deployed["per_class"][label]
        assert row == [
            label,
            str(n["support"]),
            *(f(n[m]) for m in ("precision", "recall", "f1")),
            *(f(d[m]) for m in ("precision", "recall", "f1")),
        ]

    plots = re.findall(r'<img src="([^"]+)"', page)
    assert plots == [f"/api/v1/jobs/{job_id}/plots/{name}" for name in result["plots"]]
    assert len(plots) == 3
    for url in plots:
        png = labeller.get(url)
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
