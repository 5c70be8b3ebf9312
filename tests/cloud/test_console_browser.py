"""The console in a real browser: headless Debian Chromium drives a real `soundwarden-cloud serve`,
labels clips with the keyboard, undoes, and the database shows exactly what was done; starts a
training job from the jobs page, follows it live to its report, and cancels another."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from cloud.core.config import Settings
from cloud.main import create_app
from cloud.splits import SPLITS
from cloud.tables import Clip, LabelChange
from tests.cloud.clipdata import seed
from tests.cloud.conftest import PASSWORD, add_user
from tests.cloud.jobutil import seed_training_clips
from tests.cloud.server import cloud_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 30.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="BROWSER TEST NOT RUN: /usr/bin/chromium or /usr/bin/chromedriver is missing "
        "(apt-get install chromium chromium-driver, or `make system-packages`)",
    ),
]


@contextmanager
def serving(tmp_path: Path, database_url: str, prepare: Callable[[FastAPI], None]) -> Iterator[str]:
    """A service on a free port, its database first given what `prepare` adds."""
    env = {"SOUNDWARDEN_DATA_DIR": str(tmp_path / "data"), "SOUNDWARDEN_DATABASE_URL": database_url}
    app = create_app(Settings(data_dir=tmp_path / "data", database_url=database_url))
    prepare(app)
    app.state.engine.dispose()
    with cloud_server({**os.environ, **env}, tmp_path / "server.log") as base:
        yield base


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[str]:
    """User lee, labels cry (1) and other (2), clips c1-c3 in that queue order."""

    def prepare(app: FastAPI) -> None:
        add_user(app, "lee", "labeller")
        seed(
            app,
            {"clip_id": "c1", "minutes": 0, "uncertainty": 0.1, "window_scores": [0.2, 0.7, 0.4]},
            {"clip_id": "c2", "minutes": 1, "uncertainty": 0.2},
            {"clip_id": "c3", "minutes": 2, "uncertainty": 0.3},
        )

    with serving(tmp_path, database_url, prepare) as base:
        yield base


@pytest.fixture
def training_server(tmp_path: Path, database_url: str) -> Iterator[str]:
    """Admin ada, and labelled clips in every split (tests/cloud/jobutil.py)."""

    def prepare(app: FastAPI) -> None:
        add_user(app, "ada", "admin")
        seed_training_clips(app, SPLITS)

    with serving(tmp_path, database_url, prepare) as base:
        yield base


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        # Space must start playback without a click first, as a person's key press would.
        "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(argument)
    # The driver's path is given, so Selenium Manager never tries to download one.
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def until(browser: Any, check: Callable[[Any], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # A page that reloads itself (a job's, once the job ends) leaves elements found just
    # before stale: look again.
    wait = WebDriverWait(
        browser, timeout_s, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    )
    return wait.until(check, what)


def on_page(browser: Any, path: str) -> None:
    until(browser, lambda d: urlsplit(d.current_url).path == path, f"waiting for {path}")
    until(browser, lambda d: d.execute_script("return document.readyState") == "complete", "load")


def sign_in(browser: Any, server: str, path: str, username: str) -> None:
    """Open `path`, sign in through the form, and be led back there."""
    from selenium.webdriver.common.by import By

    browser.get(f"{server}{path}")
    on_page(browser, "/login")
    browser.find_element(By.NAME, "username").send_keys(username)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
    on_page(browser, path)


def test_label_three_clips_by_keyboard_undo_and_relabel(
    server: str, browser: Any, tmp_path: Path, database_url: str
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    def press(key: str) -> None:
        ActionChains(browser).send_keys(key).perform()

    def js(script: str) -> Any:
        return browser.execute_script(script)

    sign_in(browser, server, "/", "lee")
    links = browser.find_elements(By.CSS_SELECTOR, "a.clip-link")
    assert [link.text for link in links] == ["c1", "c2", "c3"]
    links[0].click()
    on_page(browser, "/clips/c1")

    # ? shows the key help, and hides it again.
    help_box = browser.find_element(By.ID, "help")
    assert not help_box.is_displayed()
    press("?")
    until(browser, lambda d: help_box.is_displayed(), "the help to show")
    assert "undo" in help_box.text and "accept the model's suggestion" in help_box.text
    press("?")
    until(browser, lambda d: not help_box.is_displayed(), "the help to hide")

    # The speed control sets the player's rate.
    speed = Select(browser.find_element(By.ID, "speed"))
    for rate in ("0.5", "2", "0.25"):
        speed.select_by_value(rate)
        assert js("return document.getElementById('player').playbackRate") == float(rate)

    # Space plays, the playhead follows, space pauses.
    press(" ")
    until(
        browser,
        lambda d: js("return document.getElementById('player').currentTime > 0"),
        "playback",
    )
    until(
        browser,
        lambda d: js("return document.getElementById('playhead').style.left") != "0%",
        "the playhead to move",
    )
    press(" ")
    until(browser, lambda d: js("return document.getElementById('player').paused"), "pause")

    # 1, 2, 1: each labels the clip and moves on; after the last, the (empty) queue.
    press("1")
    on_page(browser, "/clips/c2")
    press("2")
    on_page(browser, "/clips/c3")
    press("1")
    on_page(browser, "/")
    assert "Nothing left to label" in browser.find_element(By.ID, "queue-empty").text

    # u takes back the last label and opens that clip; relabel it.
    press("u")
    on_page(browser, "/clips/c3")
    assert browser.find_element(By.ID, "current-label").text == "none yet"
    press("2")
    on_page(browser, "/")

    app = create_app(Settings(data_dir=tmp_path / "data", database_url=database_url))
    try:
        with app.state.sessions() as db:
            labels = dict(db.execute(select(Clip.id, Clip.label).order_by(Clip.id)).all())
            history = [
                (ch.clip_id, ch.old_label, ch.new_label)
                for ch in db.scalars(select(LabelChange).order_by(LabelChange.id))
            ]
    finally:
        app.state.engine.dispose()
    assert labels == {"c1": "cry", "c2": "other", "c3": "other"}
    assert history == [
        ("c1", None, "cry"),
        ("c2", None, "other"),
        ("c3", None, "cry"),
        ("c3", "cry", None),
        ("c3", None, "other"),
    ]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # training is the slow part
def test_train_from_the_jobs_page_follow_it_to_its_report_and_cancel_another(
    training_server: str, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    def start_training(epochs: int) -> str:
        """Submit the jobs page's form; returns the job page's path it leads to."""
        browser.get(f"{training_server}/jobs")
        on_page(browser, "/jobs")
        form = browser.find_element(By.ID, "train")
        Select(form.find_element(By.NAME, "architecture")).select_by_value("compact_cnn")
        field = form.find_element(By.NAME, "epochs")
        field.clear()
        field.send_keys(str(epochs))
        form.find_element(By.ID, "train-start").click()
        until(browser, lambda d: urlsplit(d.current_url).path != "/jobs", "the job's page")
        return str(urlsplit(browser.current_url).path)

    sign_in(browser, training_server, "/jobs", "ada")
    # Enough epochs that the job is still running when its first ones are logged.
    job_path = start_training(epochs=10)
    on_page(browser, job_path)
    # The page follows the job without a reload (the mark survives): its log grows.
    browser.execute_script("window.sameLoad = true")
    until(
        browser,
        lambda d: "epoch 1/10" in d.find_element(By.ID, "job-log").text,
        "the first epoch in the log",
        timeout_s=300,
    )
    assert browser.execute_script("return window.sameLoad") is True
    # Once it has ended the page shows the outcome, with the report.
    report = until(browser, lambda d: d.find_elements(By.ID, "report-link"), "the report link", 300)
    assert browser.find_element(By.ID, "job-state").text == "succeeded"
    report[0].click()
    on_page(browser, f"{job_path}/report")
    images = browser.find_elements(By.CSS_SELECTOR, "figure.plot img")
    assert len(images) == 3
    until(
        browser,
        lambda d: all(d.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images),
        "the plots to load",
    )
    rows = browser.find_elements(By.CSS_SELECTOR, "#comparison tbody tr")
    assert rows[0].text.startswith("Clip ROC-AUC")

    # Cancel asks first, then the job stops and its page says so.
    job_path = start_training(epochs=50)
    on_page(browser, job_path)
    browser.find_element(By.ID, "job-cancel").click()
    browser.switch_to.alert.accept()
    until(
        browser,
        lambda d: (
            d.find_element(By.ID, "job-state").text == "cancelled"
            and not d.find_elements(By.ID, "job-cancel")
        ),
        "the job to stop",
        timeout_s=300,
    )
    assert "cancel" in browser.find_element(By.ID, "job-message").text
