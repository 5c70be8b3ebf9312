"""The console's pages as a browser without JavaScript sees them: sign-in, redirects, content.
(tests/cloud/test_console_browser.py drives the keyboard in a real browser.)"""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud.api.deps import SESSION_COOKIE
from cloud.console.routes import LOGIN_CSRF_COOKIE
from cloud.tables import Event
from tests.cloud.clipdata import T0, seed
from tests.cloud.conftest import PASSWORD, add_user

PAGES = ("/", "/clips/c1", "/labels", "/stats", "/events")


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
