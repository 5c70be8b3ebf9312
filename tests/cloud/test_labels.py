"""The labelling API over SQLite and PostgreSQL: labels, labelling and undo, the queue, statistics,
spectrograms and waveforms."""

from __future__ import annotations

import io
import random
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import event, insert, select, text

from cloud.api.deps import CSRF_HEADER
from cloud.labelling import QueueFilter, QueueKey, queue_page
from cloud.splits import SPLITS, split_of
from cloud.tables import Clip, LabelChange, User
from tests.cloud.clipdata import T0, flac, seed
from tests.cloud.conftest import enrol


def changes(app: FastAPI) -> list[tuple[str, str | None, str | None, str | None]]:
    """Every LabelChange, oldest first: (clip, old, new, user name)."""
    with app.state.sessions() as db:
        rows = db.execute(
            select(LabelChange.clip_id, LabelChange.old_label, LabelChange.new_label, User.username)
            .join(User, User.id == LabelChange.user_id)
            .order_by(LabelChange.id)
        )
        return [tuple(row) for row in rows]


def clip_row(app: FastAPI, clip_id: str) -> Clip:
    with app.state.sessions() as db:
        clip = db.get(Clip, clip_id)
        assert clip is not None
        return clip


# --- who may do what -------------------------------------------------------------------------

ROUTES: list[tuple[str, str, dict[str, Any] | None, bool]] = [
    # method, path, body, admin only
    ("GET", "/api/v1/labels", None, False),
    ("POST", "/api/v1/labels", {"name": "glass", "key": 3}, True),
    ("PATCH", "/api/v1/labels/other", {"description": "anything else"}, True),
    ("DELETE", "/api/v1/labels/other", None, True),
    ("POST", "/api/v1/clips/c1/label", {"label": "cry"}, False),
    ("POST", "/api/v1/clips/c1/false-positive", None, False),
    ("POST", "/api/v1/labels/apply", {"clip_ids": ["c1"], "label": "cry"}, False),
    ("POST", "/api/v1/labels/undo", None, False),
    ("GET", "/api/v1/queue", None, False),
    ("GET", "/api/v1/stats", None, False),
    ("GET", "/api/v1/clips/c1/spectrogram.png", None, False),
    ("GET", "/api/v1/clips/c1/waveform", None, False),
]


def test_every_route_needs_sign_in_admin_routes_need_admin_changes_need_csrf(
    app: FastAPI, labeller: TestClient
) -> None:
    seed(app, {"clip_id": "c1"})
    anonymous = TestClient(app)
    token = labeller.headers[CSRF_HEADER]
    for method, path, body, admin_only in ROUTES:
        assert anonymous.request(method, path, json=body).status_code == 401, path
        if method != "GET":
            del labeller.headers[CSRF_HEADER]
            refused = labeller.request(method, path, json=body)
            labeller.headers[CSRF_HEADER] = token
            assert refused.status_code == 403, path
            assert "X-CSRF-Token" in refused.json()["detail"]
        if admin_only:
            refused = labeller.request(method, path, json=body)
            assert refused.status_code == 403 and "admin" in refused.json()["detail"], path
    # None of the refused requests changed anything.
    assert changes(app) == []
    assert [label["name"] for label in labeller.get("/api/v1/labels").json()] == ["cry", "other"]


# --- labels ----------------------------------------------------------------------------------


def test_admin_creates_renames_rekeys_and_deletes_labels(app: FastAPI, admin: TestClient) -> None:
    seed(app, {"clip_id": "c1"}, {"clip_id": "c2"})
    created = admin.post("/api/v1/labels", json={"name": "glass", "key": 3, "description": "x"})
    assert created.status_code == 201
    assert created.json() == {"name": "glass", "key": 3, "description": "x", "clips": 0}

    assert admin.post("/api/v1/labels", json={"name": "glass"}).status_code == 409
    taken = admin.post("/api/v1/labels", json={"name": "dog", "key": 1})
    assert taken.status_code == 409 and "'cry'" in taken.json()["detail"]
    for bad in ({"name": "Dog"}, {"name": "a/b"}, {"name": "none"}, {"name": "dog", "key": 0}):
        assert admin.post("/api/v1/labels", json=bad).status_code == 422, bad

    assert admin.post("/api/v1/clips/c1/label", json={"label": "cry"}).status_code == 200
    listed = admin.get("/api/v1/labels").json()
    assert [(lb["name"], lb["key"], lb["clips"]) for lb in listed] == [
        ("cry", 1, 1),
        ("other", 2, 0),
        ("glass", 3, 0),
    ]

    # A rename carries the clips and their history along; undo still finds its change.
    renamed = admin.patch("/api/v1/labels/cry", json={"name": "baby_cry"})
    assert renamed.status_code == 200 and renamed.json()["clips"] == 1
    assert clip_row(app, "c1").label == "baby_cry"
    assert changes(app) == [("c1", None, "baby_cry", "ada")]
    assert admin.post("/api/v1/labels/undo").json()["clips"][0]["label"] is None

    # Keys: moving one onto a taken digit is refused, freeing one works.
    assert admin.patch("/api/v1/labels/glass", json={"key": 2}).status_code == 409
    assert admin.patch("/api/v1/labels/other", json={"key": None}).json()["key"] is None
    assert admin.patch("/api/v1/labels/glass", json={"key": 2}).json()["key"] == 2
    assert admin.patch("/api/v1/labels/glass", json={"name": "other"}).status_code == 409
    assert admin.patch("/api/v1/labels/nope", json={"key": 5}).status_code == 404

    # A label in use cannot be deleted; an unused one can.
    assert admin.post("/api/v1/clips/c2/label", json={"label": "glass"}).status_code == 200
    in_use = admin.delete("/api/v1/labels/glass")
    assert in_use.status_code == 409 and "1 clip(s)" in in_use.json()["detail"]
    assert admin.delete("/api/v1/labels/other").status_code == 204
    assert admin.delete("/api/v1/labels/other").status_code == 404
    assert [lb["name"] for lb in admin.get("/api/v1/labels").json()] == ["baby_cry", "glass"]


# --- labelling and undo ----------------------------------------------------------------------


def test_labelling_is_recorded_and_undo_takes_back_the_last_action(
    app: FastAPI, admin: TestClient, labeller: TestClient
) -> None:
    seed(app, {"clip_id": "c1"}, {"clip_id": "c2"})
    given = labeller.post("/api/v1/clips/c1/label", json={"label": "cry"})
    assert given.status_code == 200
    body = given.json()
    assert body["label"] == "cry" and body["false_positive"] is False
    assert body["labelled_at"] is not None
    assert labeller.post("/api/v1/clips/c2/label", json={"label": "other"}).json()["false_positive"]
    assert labeller.post("/api/v1/clips/c2/label", json={"label": "other"}).status_code == 200

    assert labeller.post("/api/v1/clips/c1/label", json={"label": "dog"}).status_code == 404
    assert labeller.post("/api/v1/clips/nope/label", json={"label": "cry"}).status_code == 404
    assert labeller.post("/api/v1/clips/c1/label", json={}).status_code == 422
    # Labelling a clip with the label it has changes nothing and records nothing.
    assert changes(app) == [("c1", None, "cry", "lee"), ("c2", None, "other", "lee")]

    undone = labeller.post("/api/v1/labels/undo")
    assert undone.status_code == 200
    assert [(c["id"], c["label"], c["false_positive"]) for c in undone.json()["clips"]] == [
        ("c2", None, False)
    ]
    # Undo again redoes: the revert was a change like any other.
    assert labeller.post("/api/v1/labels/undo").json()["clips"][0]["label"] == "other"
    assert changes(app)[2:] == [("c2", "other", None, "lee"), ("c2", None, "other", "lee")]

    # Undo is per user, and refuses to overwrite someone else's later label.
    assert admin.post("/api/v1/labels/undo").status_code == 404
    assert admin.post("/api/v1/clips/c2/label", json={"label": "cry"}).status_code == 200
    stale = labeller.post("/api/v1/labels/undo")
    assert stale.status_code == 409 and "c2" in stale.json()["detail"]
    assert clip_row(app, "c2").label == "cry"

    # null takes a label away.
    taken = labeller.post("/api/v1/clips/c1/label", json={"label": None}).json()
    assert taken["label"] is None and taken["labelled_at"] is None


def test_bulk_labelling_is_one_action_for_undo(app: FastAPI, labeller: TestClient) -> None:
    seed(app, *({"clip_id": f"c{i}", "minutes": i} for i in range(4)))
    assert labeller.post("/api/v1/clips/c0/label", json={"label": "other"}).status_code == 200
    applied = labeller.post(
        "/api/v1/labels/apply", json={"clip_ids": ["c0", "c1", "c2", "c2"], "label": "other"}
    )
    assert applied.status_code == 200 and applied.json() == {"changed": 2}
    assert {c.id: c.label for c in map(lambda i: clip_row(app, f"c{i}"), range(4))} == {
        "c0": "other",
        "c1": "other",
        "c2": "other",
        "c3": None,
    }

    missing = labeller.post("/api/v1/labels/apply", json={"clip_ids": ["c3", "zz"], "label": "cry"})
    assert missing.status_code == 404 and "zz" in missing.json()["detail"]
    unknown = labeller.post("/api/v1/labels/apply", json={"clip_ids": ["c3"], "label": "dog"})
    assert unknown.status_code == 404
    assert (
        labeller.post("/api/v1/labels/apply", json={"clip_ids": [], "label": "cry"}).status_code
        == 422
    )
    assert clip_row(app, "c3").label is None

    undone = labeller.post("/api/v1/labels/undo").json()["clips"]
    assert sorted(c["id"] for c in undone) == ["c1", "c2"]
    assert [clip_row(app, f"c{i}").label for i in range(4)] == ["other", None, None, None]


def test_false_positive_labels_the_clip_other_creating_the_label(
    app: FastAPI, labeller: TestClient
) -> None:
    seed(
        app,
        {"clip_id": "c1", "device_label": "cry"},
        {"clip_id": "imported", "source": "import", "device_label": None, "device_score": None},
        labels=False,
    )
    marked = labeller.post("/api/v1/clips/c1/false-positive")
    assert marked.status_code == 200
    assert (marked.json()["label"], marked.json()["false_positive"]) == ("other", True)
    assert [lb["name"] for lb in labeller.get("/api/v1/labels").json()] == ["other"]
    assert changes(app) == [("c1", None, "other", "lee")]

    no_detection = labeller.post("/api/v1/clips/imported/false-positive")
    assert no_detection.status_code == 400 and "no device label" in no_detection.json()["detail"]
    assert labeller.post("/api/v1/clips/nope/false-positive").status_code == 404

    labeller.post("/api/v1/labels/undo")
    clip = clip_row(app, "c1")
    assert clip.label is None and clip.false_positive is False


# --- the queue -------------------------------------------------------------------------------


def queue_ids(client: TestClient, **params: Any) -> list[str]:
    response = client.get("/api/v1/queue", params=params)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_queue_puts_the_most_uncertain_first_then_unscored_newest_first(
    app: FastAPI, labeller: TestClient
) -> None:
    enrol(app, "pi-1")
    enrol(app, "pi-2")
    seed(
        app,
        {"clip_id": "sure", "minutes": 1, "uncertainty": 0.4, "device_id": "pi-1"},
        {"clip_id": "unsure-old", "minutes": 2, "uncertainty": 0.05, "device_id": "pi-1"},
        {"clip_id": "unsure-new", "minutes": 3, "uncertainty": 0.05, "device_id": "pi-2"},
        {"clip_id": "blank-old", "minutes": 4, "device_id": "pi-2", "device_score": 0.3},
        {"clip_id": "blank-new", "minutes": 5, "device_label": "glass", "device_score": 0.6},
        {"clip_id": "done", "minutes": 6, "uncertainty": 0.01, "label": "cry"},
    )
    order = ["unsure-new", "unsure-old", "sure", "blank-new", "blank-old"]
    assert queue_ids(labeller) == order

    # Page by page, the cursor walks the same order, across the scored/unscored boundary.
    walked, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = labeller.get("/api/v1/queue", params=params).json()
        walked += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert walked == order

    assert queue_ids(labeller, device="pi-2") == ["unsure-new", "blank-old"]
    assert queue_ids(labeller, device_label="glass") == ["blank-new"]
    assert queue_ids(labeller, min_score=0.5) == ["unsure-new", "unsure-old", "sure", "blank-new"]
    assert queue_ids(labeller, min_score=0.25, max_score=0.65) == ["blank-new", "blank-old"]
    after = (T0 + timedelta(minutes=3)).isoformat()
    before = (T0 + timedelta(minutes=5)).replace(tzinfo=None).isoformat()  # no offset: UTC
    assert queue_ids(labeller, received_after=after, received_before=before) == [
        "unsure-new",
        "blank-old",
    ]
    assert queue_ids(labeller, label="cry") == ["done"]

    first = labeller.get("/api/v1/queue").json()["items"][0]
    assert first["uncertainty"] == 0.05 and first["device_id"] == "pi-2"
    assert (
        labeller.get("/api/v1/queue", params={"min_score": 0.9, "max_score": 0.1}).status_code
        == 422
    )
    assert labeller.get("/api/v1/queue", params={"limit": 0}).status_code == 422
    for bad in ("high", "nan", "inf"):
        assert labeller.get("/api/v1/queue", params={"min_score": bad}).status_code == 422
    assert labeller.get("/api/v1/queue", params={"cursor": "not-a-cursor"}).status_code == 400

    # A clip labelled leaves the queue.
    labeller.post("/api/v1/clips/unsure-new/label", json={"label": "cry"})
    assert queue_ids(labeller)[0] == "unsure-old"


@pytest.mark.slow
def test_queue_reads_the_index_in_order_with_100000_clips(app: FastAPI) -> None:
    """Each page is an index range read in order, not a sort of every unlabelled clip."""
    rng = random.Random(5)
    _, duration = flac()
    rows = [
        {
            "id": f"c{i:06d}",
            "source": "device",
            "group_id": f"g{i % 40}",
            "device_label": "cry",
            "device_score": rng.random(),
            "received_at": T0 + timedelta(seconds=i),
            "sample_rate": 16000,
            "channels": 1,
            "duration_s": duration,
            "original_key": "k",
            "original_format": "flac",
            "audio_key": "k",
            "sha256": "0" * 64,
            "false_positive": False,
            # Ties, as a quantized model's scores give, and a fifth never scored.
            "uncertainty": round(rng.random(), 2) if i % 5 else None,
        }
        for i in range(100_000)
    ]
    engine = app.state.engine
    sqlite = engine.dialect.name == "sqlite"
    with engine.begin() as conn:  # Core, not the ORM: four times faster for 100,000 rows
        conn.execute(insert(Clip.__table__), rows)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE" if sqlite else "ANALYZE clips"))

    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().startswith("SELECT"):
            statements.append((statement, params))

    # The first page, a page deep in the scored part, and one across into the unscored part.
    with app.state.sessions() as db:
        keys = [None, *(db.get(Clip, f"c{i:06d}") for i in (40_001, 99_999))]
    event.listen(engine, "before_cursor_execute", capture)
    try:
        with app.state.sessions() as db:
            for clip in keys:
                page = queue_page(db, QueueFilter(), QueueKey.of(clip) if clip else None, 51)
                assert len(page) == 51
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert len(statements) >= 3
    with engine.connect() as conn:
        for statement, params in statements:
            explain = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "
            plan = "\n".join(
                str(row[-1]) for row in conn.exec_driver_sql(explain + statement, params)
            )
            assert "ix_clips_queue" in plan, plan
            if sqlite:
                assert "USE TEMP B-TREE FOR ORDER BY" not in plan, plan  # a full sort
            else:
                assert "Seq Scan" not in plan, plan


# --- statistics ------------------------------------------------------------------------------


def group_in(split: str) -> str:
    return next(g for g in (f"device-{i}" for i in range(1000)) if split_of(g) == split)


def test_splits_are_by_group_stable_and_80_10_10() -> None:
    groups = [f"recorder-{i}" for i in range(20_000)]
    shares = Counter(split_of(g) for g in groups)
    assert abs(shares["train"] / 20_000 - 0.8) < 0.01
    assert abs(shares["val"] / 20_000 - 0.1) < 0.01
    assert abs(shares["test"] / 20_000 - 0.1) < 0.01
    assert [split_of(g) for g in groups[:50]] == [split_of(g) for g in groups[:50]]


def test_stats_count_clips_and_groups_per_label_and_split(
    app: FastAPI, labeller: TestClient
) -> None:
    train, val, test = (group_in(split) for split in SPLITS)
    seed(
        app,
        {"clip_id": "t1", "group_id": train, "label": "cry"},
        {"clip_id": "t2", "group_id": train, "label": "cry"},
        {"clip_id": "v1", "group_id": val, "label": "cry"},
        {"clip_id": "x1", "group_id": test},
        {"clip_id": "x2", "group_id": test},
    )
    assert labeller.post("/api/v1/clips/x1/false-positive").status_code == 200
    stats = labeller.get("/api/v1/stats").json()
    assert stats["splits"] == {"train": 80, "val": 10, "test": 10}
    by_label = {row["label"]: row for row in stats["labels"]}
    assert by_label["cry"]["clips"] == {"train": 2, "val": 1, "test": 0}
    assert by_label["cry"]["groups"] == {"train": 1, "val": 1, "test": 0}
    assert by_label["cry"]["total"] == 3
    assert by_label["other"]["clips"] == {"train": 0, "val": 0, "test": 1}
    assert (stats["unlabelled"], stats["false_positives"]) == (1, 1)


# --- spectrogram and waveform ----------------------------------------------------------------


def test_every_window_function_renders_its_own_spectrogram(
    app: FastAPI, labeller: TestClient
) -> None:
    seed(app, {"clip_id": "c1"})
    url = "/api/v1/clips/c1/spectrogram.png"
    images = {}
    for window in ("hann", "hamming", "blackman", "bartlett", "rectangular", "kaiser"):
        response = labeller.get(url, params={"window": window, "scale": "linear"})
        assert response.status_code == 200, (window, response.text)
        assert response.headers["content-type"] == "image/png"
        images[window] = Image.open(io.BytesIO(response.content)).convert("RGB").tobytes()
    assert len(set(images.values())) == len(images), "two windows drew the same picture"

    _, duration = flac()
    linear = Image.open(io.BytesIO(labeller.get(url, params={"scale": "linear"}).content))
    # Centred frames at a 128-sample hop span the clip; 512-point FFT: 257 bins.
    assert linear.size == (1 + int(duration * 16000) // 128, 257)
    mel = Image.open(io.BytesIO(labeller.get(url).content))
    assert mel.size == (linear.width, 64)  # the detector's 64 mel bands
    big = labeller.get(url, params={"n_fft": 2048, "overlap": 0.5})
    assert Image.open(io.BytesIO(big.content)).size == (1 + int(duration * 16000) // 1024, 64)

    for bad in (
        {"window": "gauss"},
        {"scale": "log"},
        {"n_fft": 300},
        {"n_fft": 4096},
        {"n_fft": "big"},
        {"overlap": 0.99},
        {"overlap": -0.1},
    ):
        assert labeller.get(url, params=bad).status_code == 422, bad
    assert labeller.get("/api/v1/clips/nope/spectrogram.png").status_code == 404


def test_waveform_gives_min_and_max_per_column(app: FastAPI, labeller: TestClient) -> None:
    seed(app, {"clip_id": "c1"})
    wave = labeller.get("/api/v1/clips/c1/waveform", params={"width": 300})
    assert wave.status_code == 200
    body = wave.json()
    _, duration = flac()
    assert body["sample_rate"] == 16000 and body["duration_s"] == pytest.approx(duration)
    assert len(body["min"]) == len(body["max"]) == 300
    assert all(-1 <= lo <= hi <= 1 for lo, hi in zip(body["min"], body["max"], strict=True))
    # A crying baby is loud somewhere and not everywhere.
    spans = [hi - lo for lo, hi in zip(body["min"], body["max"], strict=True)]
    assert max(spans) > 0.5 and min(spans) < max(spans) / 4
    assert labeller.get("/api/v1/clips/c1/waveform", params={"width": 5}).status_code == 422
    assert labeller.get("/api/v1/clips/nope/waveform").status_code == 404
