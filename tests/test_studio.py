"""The studio page in a real browser: headless Debian Chromium driven by Playwright against the
Serve app on the shared local Ray. Upload a mix, wait for the master, A/B it loudness-matched,
check both plots drew both curves, download the master and measure it; upload bad input and
read the error the page shows. Without a browser: the page's routes and the plotted series."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from mastering.io import write_audio
from mastering.loudness import integrated_loudness
from mastering.testsignals import music_like

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no system Chromium (Debian: apt-get install chromium)"
)
#: Where a screenshot is copied for people to look at.
NOTES_SCREENSHOT = Path("/work/notes/studio.png")
TARGET_LUFS = -16.0

# Pixels of a canvas within 40 (RGB distance) of a curve colour of studio.js.
COUNT_COLOR = """([id, hex]) => {
  const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const t = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (Math.hypot(d[i] - t[0], d[i + 1] - t[1], d[i + 2] - t[2]) < 40) n++;
  }
  return n;
}"""


@pytest.fixture(scope="module")
def studio_url(ray_cluster, tmp_path_factory):
    """Base URL of a CPU Serve app on a free port; Serve is shut down afterwards."""
    from ray import serve

    from serving.config import ServingConfig
    from serving.local import deploy, free_port, start_http

    port = free_port()
    start_http("127.0.0.1", port)
    config = ServingConfig(
        port=port,
        groups=1,
        max_replicas=1,
        max_upload_mb=20.0,
        upload_dir=str(tmp_path_factory.mktemp("studio-uploads")),
    )
    try:
        (url,) = deploy(config)
        yield url
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the Python playwright package is not installed"
    )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser, studio_url):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1000, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{studio_url}/")
    page.wait_for_function("document.getElementById('genre').options.length > 1")
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("studio-mix")
    return write_audio(folder / "mix.wav", music_like(3.0, seed=7), format="wav24")


def wait_done(page) -> None:
    page.wait_for_function(
        "!document.getElementById('submit').disabled && "
        "(!document.getElementById('results').hidden || !document.getElementById('error').hidden)",
        timeout=120_000,
    )


@pytest.mark.ray
@needs_chromium
def test_upload_listen_see_and_download(page, mix, tmp_path):
    page.select_option("#genre", "pop")
    page.select_option("#emotion", index=1)
    page.fill("#target_lufs", str(TARGET_LUFS))
    page.set_input_files("#file", str(mix))
    page.click("#submit")
    wait_done(page)
    assert page.is_hidden("#error"), page.inner_text("#error")
    report = page.evaluate("window.studio.report")
    assert report["target_lufs"] == TARGET_LUFS and report["conditioning"]["genre"] == "pop"

    # A/B: the louder version is turned down to the quieter one's loudness
    page.click("#play")
    assert page.get_attribute("#ab", "aria-pressed") == "true"
    page.click("#ab")
    assert page.get_attribute("#ab", "aria-pressed") == "false"
    assert page.evaluate("window.studio.hearing") == "original"
    levels = page.evaluate("window.studio.levels")
    heard_original = report["before"]["integrated_lufs"] + 20 * math.log10(levels["original"])
    heard_master = report["after"]["integrated_lufs"] + 20 * math.log10(levels["master"])
    assert heard_original == pytest.approx(heard_master, abs=0.01)
    assert max(levels.values()) == pytest.approx(1.0) and min(levels.values()) < 1.0
    page.uncheck("#matched")
    assert page.evaluate("window.studio.levels") == {"original": 1, "master": 1}
    page.check("#matched")
    page.click("#play")  # stop

    # both curves drawn on both plots
    for canvas in ("spectrum-plot", "loudness-plot"):
        for color in ("#d9650f", "#1f5fbf"):
            assert page.evaluate(COUNT_COLOR, [canvas, color]) > 300, (canvas, color)
    assert page.locator("#parameters tbody tr").count() > 20
    assert "LUFS" in page.inner_text("#measures")
    shot = tmp_path / "studio.png"
    page.screenshot(path=str(shot), full_page=True)
    if NOTES_SCREENSHOT.parent.is_dir():
        shutil.copy(shot, NOTES_SCREENSHOT)

    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "mix.mastered.wav"
    audio, rate = sf.read(saved, dtype="float32", always_2d=True)
    assert rate == 48_000 and audio.shape == (3 * 48_000, 2)
    lufs = float(integrated_loudness(audio.T, rate))
    assert lufs == pytest.approx(report["after"]["integrated_lufs"], abs=0.05)
    assert abs(lufs - TARGET_LUFS) < 1.0


def drop_file(page, name: str, mime: str, js_content: str) -> None:
    """Drop a file made in the page (``js_content``: a JS expression for its bytes) on the
    drop zone, as a drag-and-drop from the desktop would."""
    transfer = page.evaluate_handle(
        f"""() => {{
            const dt = new DataTransfer();
            dt.items.add(new File([{js_content}], {name!r}, {{ type: {mime!r} }}));
            return dt;
        }}"""
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    assert name in page.inner_text("#drop-text")


@pytest.mark.ray
@needs_chromium
def test_bad_uploads_show_the_api_errors(page, mix):
    """Format (415), size (413) and parameter (422) errors, each as the page words it."""
    drop_file(page, "notes.txt", "text/plain", "'not audio at all '.repeat(40)")
    page.click("#submit")
    wait_done(page)
    text = page.inner_text("#error")
    assert "not an audio file" in text and "notes.txt" in text and "not readable" in text
    assert page.is_hidden("#results")

    drop_file(page, "huge.wav", "audio/wav", "new Uint8Array(21_000_000)")  # limit: 20 MB
    page.click("#submit")
    wait_done(page)
    text = page.inner_text("#error")
    assert "too large" in text and "20 MB" in text

    page.set_input_files("#file", str(mix))
    page.fill("#target_lufs", "5")
    page.click("#submit")
    wait_done(page)
    text = page.inner_text("#error")
    assert "setting is not valid" in text and "LUFS" in text


# -- without a browser ------------------------------------------------------------------------
class PageOnlyService:
    """The attributes :func:`serving.api.build_api` reads, with a token set (the routes under
    test never reach the mastering calls)."""

    token = "secret"
    max_upload_bytes = 1_000_000
    upload_dir = None

    def presets(self) -> dict:
        return {"genres": ["pop"]}


def test_page_and_assets_are_served_without_token_and_nothing_else_is():
    from fastapi.testclient import TestClient

    from serving.api import build_api

    client = TestClient(build_api(PageOnlyService()))
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="studio/studio.js"' in page.text and "http" not in page.text  # nothing external
    for name, kind in (("studio.js", "text/javascript"), ("studio.css", "text/css")):
        r = client.get(f"/studio/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
    auth = {"Authorization": "Bearer secret"}
    assert client.get("/studio/series.py").status_code == 401  # only the page is open
    assert client.get("/studio/series.py", headers=auth).status_code == 404
    assert client.get("/studio/..%2Fapp.py", headers=auth).status_code == 404
    assert client.get("/v1/presets").status_code == 401  # the API still needs the token
    assert client.get("/v1/presets", headers=auth).json() == {"genres": ["pop"]}
    assert "/" not in client.get("/openapi.json", headers=auth).json()["paths"]


def test_series_measure_what_was_played():
    """A 1 kHz tone at a known loudness: the spectrum peaks in the 1 kHz band, the momentary
    curve sits at the integrated loudness, the quieter copy 6 dB lower."""
    import torch

    from serving.studio import studio_series

    t = torch.arange(48_000 * 2) / 48_000
    tone = 0.5 * torch.sin(2 * math.pi * 1000.0 * t).repeat(2, 1)
    s = studio_series(tone, tone * 0.5)
    hz = s["spectrum_hz"]
    peak = max(range(len(hz)), key=lambda i: s["before"]["spectrum_db"][i])
    assert 0.85 < hz[peak] / 1000.0 < 1.15
    lufs = float(integrated_loudness(tone, 48_000))
    curve = s["before"]["loudness"]
    assert curve["t_s"][0] == pytest.approx(0.2) and len(curve["t_s"]) == 17
    assert all(v == pytest.approx(lufs, abs=0.05) for v in curve["lufs"])
    quieter = s["after"]["loudness"]["lufs"]
    assert all(v == pytest.approx(lufs - 6.02, abs=0.05) for v in quieter)
    assert max(s["after"]["spectrum_db"]) == pytest.approx(
        max(s["before"]["spectrum_db"]) - 6.02, abs=0.01
    )
