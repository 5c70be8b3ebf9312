"""The console in a real browser: headless Debian Chromium drives a real `soundwarden-cloud serve`,
labels clips with the keyboard, undoes, and the database shows exactly what was done."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from cloud.core.config import Settings
from cloud.main import create_app
from cloud.tables import Clip, LabelChange
from tests.cloud.clipdata import seed
from tests.cloud.conftest import PASSWORD, add_user
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


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[str]:
    """A seeded service on a free port: user lee, labels cry (1) and other (2), clips c1-c3
    in that queue order."""
    env = {"SOUNDWARDEN_DATA_DIR": str(tmp_path / "data"), "SOUNDWARDEN_DATABASE_URL": database_url}
    app = create_app(Settings(data_dir=tmp_path / "data", database_url=database_url))
    add_user(app, "lee", "labeller")
    seed(
        app,
        {"clip_id": "c1", "minutes": 0, "uncertainty": 0.1, "window_scores": [0.2, 0.7, 0.4]},
        {"clip_id": "c2", "minutes": 1, "uncertainty": 0.2},
        {"clip_id": "c3", "minutes": 2, "uncertainty": 0.3},
    )
    app.state.engine.dispose()
    with cloud_server({**os.environ, **env}, tmp_path / "server.log") as base:
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


def test_label_three_clips_by_keyboard_undo_and_relabel(
    server: str, browser: Any, tmp_path: Path, database_url: str
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    def until(check: Callable[[Any], Any], what: str) -> Any:
        return WebDriverWait(browser, WAIT_S, poll_frequency=0.1).until(check, what)

    def on_page(path: str) -> None:
        until(lambda d: urlsplit(d.current_url).path == path, f"waiting for {path}")
        until(lambda d: d.execute_script("return document.readyState") == "complete", "loading")

    def press(key: str) -> None:
        ActionChains(browser).send_keys(key).perform()

    def js(script: str) -> Any:
        return browser.execute_script(script)

    # Signing in through the form leads back to the page asked for.
    browser.get(f"{server}/")
    on_page("/login")
    browser.find_element(By.NAME, "username").send_keys("lee")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
    on_page("/")
    links = browser.find_elements(By.CSS_SELECTOR, "a.clip-link")
    assert [link.text for link in links] == ["c1", "c2", "c3"]
    links[0].click()
    on_page("/clips/c1")

    # ? shows the key help, and hides it again.
    help_box = browser.find_element(By.ID, "help")
    assert not help_box.is_displayed()
    press("?")
    until(lambda d: help_box.is_displayed(), "the help to show")
    assert "undo" in help_box.text and "accept the model's suggestion" in help_box.text
    press("?")
    until(lambda d: not help_box.is_displayed(), "the help to hide")

    # The speed control sets the player's rate.
    speed = Select(browser.find_element(By.ID, "speed"))
    for rate in ("0.5", "2", "0.25"):
        speed.select_by_value(rate)
        assert js("return document.getElementById('player').playbackRate") == float(rate)

    # Space plays, the playhead follows, space pauses.
    press(" ")
    until(lambda d: js("return document.getElementById('player').currentTime > 0"), "playback")
    until(
        lambda d: js("return document.getElementById('playhead').style.left") != "0%",
        "the playhead to move",
    )
    press(" ")
    until(lambda d: js("return document.getElementById('player').paused"), "pause")

    # 1, 2, 1: each labels the clip and moves on; after the last, the (empty) queue.
    press("1")
    on_page("/clips/c2")
    press("2")
    on_page("/clips/c3")
    press("1")
    on_page("/")
    assert "Nothing left to label" in browser.find_element(By.ID, "queue-empty").text

    # u takes back the last label and opens that clip; relabel it.
    press("u")
    on_page("/clips/c3")
    assert browser.find_element(By.ID, "current-label").text == "none yet"
    press("2")
    on_page("/")

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
