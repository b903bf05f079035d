"""The web page in a real headless Chromium (Playwright), against a real `contrastive serve`
process: the built-in model, an API key, collections in a temporary folder, and the
scikit-image photos. Skipped when the `playwright` package or the browser is missing.

Needs: `pip install playwright` (the dev extra) and Debian's Chromium
(`apt-get install chromium`); CONTRASTIVE_CHROMIUM names another browser binary. With
CONTRASTIVE_SCREENSHOTS=DIR, the full-page screenshots are copied to DIR.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data

from tests.helpers import free_port, image_bytes, serve_argv, wait_server_ready

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser tests need the playwright package"
)
CHROMIUM = os.environ.get("CONTRASTIVE_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"the browser tests need Chromium at {CHROMIUM} (apt-get install chromium, "
        "or set CONTRASTIVE_CHROMIUM)",
        allow_module_level=True,
    )
expect = sync_api.expect

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
KEY = "browser-test-key"
LABELS = "dog, cat, car, rocket, coffee cup"
TIMEOUT_MS = 90_000  # the first request of each kind runs on a cold, shared CPU


class Server:
    """`python -m contrastkit.service serve` on a free port; killed by stop()."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "server.log"
        self.model_id = ""
        cmd = serve_argv(self.port, folder / "collections")
        env = {**os.environ, "CONTRASTIVE_API_KEYS": KEY}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self) -> None:
        """Waits for /readyz (open without a key); notes the loaded model's id."""
        self.model_id = str(wait_server_ready(self.url, self.proc, self.log.read_text)["model"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("web-server"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The cat and four other scikit-image photos, as the files a user would pick."""
    folder = tmp_path_factory.mktemp("photos")
    horse = np.where(skimage.data.horse(), 255, 0).astype(np.uint8)  # a silhouette
    blobs = {
        "chelsea.jpg": image_bytes(skimage.data.chelsea(), "JPEG", quality=90),
        "astronaut.jpg": image_bytes(skimage.data.astronaut(), "JPEG", quality=90),
        "coffee.jpg": image_bytes(skimage.data.coffee(), "JPEG", quality=90),
        "rocket.jpg": image_bytes(skimage.data.rocket(), "JPEG", quality=90),
        "horse.png": image_bytes(horse, "PNG"),
    }
    paths = {}
    for name, blob in blobs.items():
        paths[name] = folder / name
        paths[name].write_bytes(blob)
    return paths


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        expect.set_options(timeout=TIMEOUT_MS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    """A fresh browser context (empty localStorage: no key) on the page, 1280x900."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(server.url + "/")
    expect(tab.get_by_test_id("ready")).to_have_text("ready")
    yield tab
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    out = os.environ.get("CONTRASTIVE_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / name)
    return path


def enter_key(page: Any) -> None:
    page.get_by_label("API key").fill(KEY)
    page.get_by_test_id("key-save").click()
    expect(page.get_by_test_id("model-dim")).to_have_text("384")
    expect(page.get_by_test_id("header-alert")).to_be_hidden()


def no_horizontal_overflow(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def test_classify_needs_the_key_then_ranks_cat_first(
    page: Any, server: Server, photos: dict[str, Path], tmp_path: Path
) -> None:
    # Without a key: the model's id (from /readyz) and a clear note that a key is needed.
    expect(page.get_by_test_id("model-id")).to_have_text(server.model_id)
    expect(page.get_by_test_id("header-alert")).to_contain_text("This server needs an API key")

    files = [photos["chelsea.jpg"], photos["coffee.jpg"], photos["rocket.jpg"]]
    page.get_by_test_id("classify-files").set_input_files(files)
    expect(page.get_by_test_id("classify-picked")).to_contain_text("3 images: chelsea.jpg")
    page.get_by_test_id("labels").fill(LABELS)
    page.get_by_test_id("classify-run").click()
    alert = page.get_by_test_id("classify-alert")
    expect(alert).to_contain_text("This server needs an API key")
    expect(alert).to_contain_text("HTTP 401 · unauthorized")

    enter_key(page)
    page.get_by_test_id("classify-run").click()
    results = page.get_by_test_id("classify-result")
    expect(results).to_have_count(3)
    expect(alert).to_be_hidden()
    for i, best in enumerate(["cat", "coffee cup", "rocket"]):
        labels = results.nth(i).get_by_test_id("rank-label")
        expect(labels).to_have_count(5)
        expect(labels.first).to_have_text(best)
    cat = results.first
    expect(cat).to_contain_text("chelsea.jpg")
    # the best bar is drawn nearly full width, with its percentage
    bar_share = cat.locator(".rank").first.evaluate(
        "row => row.querySelector('.bar-fill').getBoundingClientRect().width"
        " / row.querySelector('.bar').getBoundingClientRect().width"
    )
    pct = cat.get_by_test_id("rank-pct").first.text_content()
    assert bar_share > 0.9 and float(pct.rstrip("%")) > 90, (bar_share, pct)
    assert cat.locator("img").evaluate("img => img.naturalWidth") > 0
    assert no_horizontal_overflow(page)
    screenshot(page, tmp_path, "web-classify.png")
    page.set_viewport_size({"width": 390, "height": 844})
    assert no_horizontal_overflow(page)
    screenshot(page, tmp_path, "web-classify-narrow.png")


def test_collection_add_and_search_by_text_and_image(
    page: Any, photos: dict[str, Path], tmp_path: Path
) -> None:
    enter_key(page)
    page.get_by_label("New collection").fill("photos")
    page.get_by_test_id("collection-create").click()
    expect(page.get_by_test_id("search-status")).to_contain_text("Created the collection")
    expect(page.get_by_test_id("collection-select")).to_have_value("photos")

    page.get_by_test_id("add-files").set_input_files(list(photos.values()))
    page.get_by_test_id("add-run").click()
    expect(page.get_by_test_id("search-status")).to_contain_text("Added 5 of 5 images")
    expect(page.get_by_test_id("search-alert")).to_be_hidden()
    expect(page.get_by_test_id("collection-select")).to_contain_text("photos — 5 items")

    page.get_by_test_id("query-text").fill("a cat")
    page.get_by_test_id("search-run").click()
    hits = page.get_by_test_id("hit")
    expect(hits).to_have_count(5)
    expect(hits.first.get_by_test_id("hit-id")).to_have_text("chelsea.jpg")
    thumb = hits.first.get_by_test_id("hit-thumb")
    expect(thumb).to_be_visible()
    thumb_width = thumb.evaluate("img => img.decode().then(() => img.naturalWidth)")
    assert 0 < thumb_width <= 128
    assert page.get_by_test_id("hit-thumb").count() == 5  # every item has its thumbnail
    assert no_horizontal_overflow(page)
    screenshot(page, tmp_path, "web-search.png")

    # the same photo as the query finds itself first, with a cosine of ~1
    page.get_by_test_id("query-file").set_input_files(photos["rocket.jpg"])
    expect(page.get_by_test_id("query-text")).to_be_disabled()
    page.get_by_test_id("search-run").click()
    expect(hits.first.get_by_test_id("hit-id")).to_have_text("rocket.jpg")
    expect(hits.first.get_by_test_id("hit-score")).to_have_text("score 1.000")

    # a narrow screen: one column, nothing wider than the screen
    page.set_viewport_size({"width": 390, "height": 844})
    assert no_horizontal_overflow(page)
    screenshot(page, tmp_path, "web-narrow.png")


def test_api_errors_are_shown_in_the_panel_that_caused_them(
    page: Any, photos: dict[str, Path], tmp_path: Path
) -> None:
    # a wrong key is refused, and the page says so
    page.get_by_label("API key").fill("not-the-key")
    page.get_by_test_id("key-save").click()
    expect(page.get_by_test_id("header-alert")).to_contain_text("The API key was refused")
    expect(page.get_by_test_id("key-state")).to_have_text("refused")
    enter_key(page)
    alert = page.get_by_test_id("classify-alert")
    run = page.get_by_test_id("classify-run")

    # no labels: the service's own message and code
    page.get_by_test_id("classify-files").set_input_files(photos["chelsea.jpg"])
    run.click()
    expect(alert).to_contain_text("'labels' is empty: send at least one label")
    expect(alert).to_contain_text("HTTP 422 · empty_input")

    # a file that is not an image
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image at all")
    page.get_by_test_id("classify-files").set_input_files(notes)
    page.get_by_test_id("labels").fill(LABELS)
    run.click()
    expect(alert).to_contain_text("image 0 is not a readable image")
    expect(alert).to_contain_text("image_decode_failed")
    expect(page.get_by_test_id("search-alert")).to_be_hidden()  # only the panel at fault

    # a template without {} (the templates are under "advanced")
    page.get_by_test_id("classify-files").set_input_files(photos["chelsea.jpg"])
    page.get_by_text("Advanced: prompt templates").click()
    page.get_by_test_id("templates").fill("a photo of a {}.\nno placeholder")
    run.click()
    expect(alert).to_contain_text("templates[1] 'no placeholder' has no '{}'")
    expect(alert).to_contain_text("invalid_template")
    page.get_by_test_id("templates").fill("")

    # while a request runs, the panel's buttons are disabled and the busy sign shows
    held: list[Any] = []
    page.route("**/v1/classify", lambda route: held.append(route))
    page.get_by_test_id("classify-files").set_input_files(photos["chelsea.jpg"])
    run.click()
    expect(run).to_be_disabled()
    expect(page.get_by_test_id("classify-busy")).to_be_visible()
    page.wait_for_timeout(100)
    assert held, "the request never left the page"
    held[0].abort()
    expect(alert).to_contain_text("The service cannot be reached")  # a network failure
    expect(run).to_be_enabled()
    expect(page.get_by_test_id("classify-busy")).to_be_hidden()
    page.unroute("**/v1/classify")

    # the search panel: a bad collection name is refused with the service's message
    page.get_by_label("New collection").fill("no spaces allowed")
    page.get_by_test_id("collection-create").click()
    search_alert = page.get_by_test_id("search-alert")
    expect(search_alert).to_contain_text("invalid collection name")
    expect(search_alert).to_contain_text("invalid_name")
    screenshot(page, tmp_path, "web-errors.png")


def test_duplicates_view_groups_a_photo_with_its_copy(
    page: Any, photos: dict[str, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "chelsea-q60.jpg"  # the same photo re-encoded: cosine ~0.99
    copy.write_bytes(image_bytes(skimage.data.chelsea(), "JPEG", quality=60))
    enter_key(page)
    page.get_by_label("New collection").fill("dups")
    page.get_by_test_id("collection-create").click()
    expect(page.get_by_test_id("collection-select")).to_have_value("dups")
    picked = [photos["chelsea.jpg"], photos["coffee.jpg"], photos["rocket.jpg"], copy]
    page.get_by_test_id("add-files").set_input_files(picked)
    page.get_by_test_id("add-run").click()
    expect(page.get_by_test_id("search-status")).to_contain_text("Added 4 of 4 images")

    page.get_by_test_id("dups-threshold").fill("0.9")
    page.get_by_test_id("dups-run").click()
    groups = page.locator("#search-panel").get_by_test_id("dups-group")  # under its form
    expect(groups).to_have_count(1)
    expect(groups.first.get_by_test_id("dups-id")).to_have_text(["chelsea-q60.jpg", "chelsea.jpg"])
    expect(groups.first.locator("img")).to_have_count(2)  # their stored thumbnails
    expect(page.get_by_test_id("search-status")).to_contain_text("1 group in 4 items")
    assert no_horizontal_overflow(page)
    screenshot(page, tmp_path, "web-duplicates.png")
