"""The explorer in real headless Chromium: pages render, the receipt page recomputes RFC 8785 +
SHA-256 in the browser (WebCrypto and the page's own SHA-256), and a tampered core shows MISMATCH.
Screenshots (desktop and phone widths) go to test-output/screenshots/."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import rfc8785

pytestmark = pytest.mark.browser

SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}


def load(browser, url: str) -> None:
    browser.get(url)
    browser.execute_script("return document.readyState")


def verification(browser) -> dict[str, Any]:
    """Wait for the page's own check to finish and return what it reported."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 15).until(
        lambda d: d.execute_script("return document.getElementById('verify-result').dataset.state") != "pending")
    return browser.execute_script("""
        const el = document.getElementById('verify-result');
        return {state: el.dataset.state, computed: el.dataset.computed, method: el.dataset.method,
                published: el.dataset.published, verdict: document.getElementById('verify-verdict').textContent,
                shown: document.getElementById('verify-computed').textContent,
                canonical: document.getElementById('canonical-json').textContent};""")


def screenshot(browser, name: str) -> Path:
    """Full-page PNG via the DevTools protocol."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    metrics = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    # Capturing beyond the viewport drops the vertical scrollbar, so the page lays out at the full
    # window width: clip to that, not to the content width measured with the scrollbar.
    width = max(size["width"], browser.execute_script("return window.innerWidth"))
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1}})
    path = SHOTS / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


@pytest.fixture
def phone(browser):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        yield browser
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def h1(browser) -> str:
    return browser.execute_script("return document.querySelector('h1').textContent.trim()")


def main_text(browser) -> str:
    return browser.execute_script("return document.querySelector('main').innerText")


def test_every_page_renders_with_real_data(browser, world):
    pages = {
        "overview": ("/", "Basis network", ["Inference runtime", "31337", world.ledger.signer.address]),
        "models": ("/models", "Advertised models", ["basis-large", "32,768", "0.5x"]),
        "receipts": ("/receipts", "Receipts", [world.order[-1][:8]]),
        "workers": ("/workers", "Contributor workers", ["online", "offline"]),
        "settlement": ("/settlement", "Settlement batches", [world.batch["batch_id"][:10], "Unsettled receipts"]),
    }
    for name, (path, title, needles) in pages.items():
        load(browser, world.url + path)
        assert h1(browser) == title
        text = main_text(browser)
        for needle in needles:
            assert needle in text, (name, needle)
        assert "$BASIS is planned, not live" in browser.find_element("css selector", "footer").text
        screenshot(browser, f"desktop-{name}")


def test_search_box_goes_to_the_receipt(browser, world):
    load(browser, world.url + "/receipts")
    box = browser.find_element("id", "q")
    box.send_keys(world.receipts["large"]["hash"])
    box.submit()
    assert browser.current_url == f"{world.url}/receipts/{world.receipts['large']['core']['job_id']}"
    assert verification(browser)["state"] == "match"


def test_receipt_hash_matches_in_the_browser(browser, world):
    receipt = world.receipts["settled"]
    load(browser, f"{world.url}/receipts/{receipt['core']['job_id']}")
    result = verification(browser)
    assert browser.execute_script("return window.isSecureContext") is True  # loopback is a secure context
    assert result["method"] == "webcrypto"
    assert result["state"] == "match" and result["computed"] == result["published"] == receipt["hash"]
    assert result["shown"] == receipt["hash"] and "match" in result["verdict"]
    assert result["canonical"] == rfc8785.dumps(receipt["core"]).decode()
    screenshot(browser, "desktop-receipt")


def test_nocrypto_fallback_gives_the_same_hash(browser, world):
    for label in ("first", "gateway", "large"):
        receipt = world.receipts[label]
        load(browser, f"{world.url}/receipts/{receipt['core']['job_id']}?nocrypto=1")
        result = verification(browser)
        assert result["method"] == "builtin"
        assert result["state"] == "match" and result["computed"] == receipt["hash"], label


SHA256_VECTORS = {  # FIPS 180-2 / NIST examples
    "": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "abc": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq":
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrst"
    "nopqrstu": "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
}


def test_builtin_sha256_matches_known_vectors(browser, world):
    load(browser, f"{world.url}/receipts/{world.order[0]}?nocrypto=1")
    hex_of = "return BasisVerify.sha256Hex(arguments[0])"
    for message, digest in SHA256_VECTORS.items():
        assert browser.execute_script(hex_of, message) == digest, message
    million = browser.execute_script("return BasisVerify.sha256Hex('a'.repeat(1000000))")
    assert million == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
    # Every padding boundary, and multi-byte UTF-8, against Python's hashlib.
    for n in (1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129):
        message = "x" * n
        assert browser.execute_script(hex_of, message) == hashlib.sha256(message.encode()).hexdigest(), n
    text = "é€😀 \u2028 \"quoted\" \\ tab\t"
    assert browser.execute_script(hex_of, text) == hashlib.sha256(text.encode()).hexdigest()


JCS_CASES = [
    {"v": 1, "job_id": "0b5d3c9e-0000-4000-8000-000000000001", "worker": None, "charged": "178000000000000"},
    {"b": [3, {"z": None, "a": True}, []], "a": {}, "": "empty key", "A": False},
    {"\u20ac": 1, "\r": 2, "\ufb33": 3, "1": 4, "\U0001f600": 5, "\u0080": 6, "\u00f6": 7},  # RFC 8785 §3.2.3
    {"escapes": "\u0000\u001f\b\f\n\r\t\"\\/\u007f\u2028 é 😀", "unicode": "\u00e9\u0301"},
    {"numbers": [0, 1, -1, 9007199254740991, -9007199254740991, 1.5, 0.1, 1e21, 1e-7, 123e-20, 333333333.3333333]},
    [],
    "plain",
    42,
    None,
]


def test_jcs_in_the_browser_matches_rfc8785(browser, world):
    load(browser, f"{world.url}/receipts/{world.order[0]}")
    for case in JCS_CASES:
        expected = rfc8785.dumps(case).decode()
        got = browser.execute_script("return BasisVerify.jcs(JSON.parse(arguments[0]))", json.dumps(case))
        assert got == expected, case
    for bad in ("'\\ud800'", "{'\\udc00x': 1}", "{a: NaN}", "[Infinity]", "{a: undefined}"):
        error = browser.execute_script(f"try {{ BasisVerify.jcs({bad}); return null }} catch (e) {{ return e.name }}")
        assert error == "TypeError", bad
    # A core integer past 2^53-1 cannot be verified as served: the page refuses instead of guessing.
    error = browser.execute_script("""try { BasisVerify.requireSafeIntegers(JSON.parse('{"n": [9007199254740993]}'));
                                      return null } catch (e) { return e.name }""")
    assert error == "RangeError"
    assert browser.execute_script("return BasisVerify.requireSafeIntegers({n: [9007199254740991]}).n[0]") == 2**53 - 1


@pytest.fixture
def tampered(world):
    """The 'cancelled' receipt's core edited in the views file (its published hash left alone)."""
    receipt = world.receipts["cancelled"]
    db = sqlite3.connect(world.settings.views_path)
    (original,) = db.execute("SELECT core FROM receipts WHERE job_id = ?", (receipt["core"]["job_id"],)).fetchone()
    core = json.loads(original)
    core["charged"] = str(int(core["charged"]) // 2)
    with db:
        db.execute("UPDATE receipts SET core = ? WHERE job_id = ?", (json.dumps(core), core["job_id"]))
    try:
        yield receipt, core
    finally:
        with db:
            db.execute("UPDATE receipts SET core = ? WHERE job_id = ?", (original, core["job_id"]))
        db.close()


def test_tampered_core_shows_mismatch_with_both_hashes(browser, world, tampered):
    receipt, core = tampered
    for query in ("", "?nocrypto=1"):
        load(browser, f"{world.url}/receipts/{core['job_id']}{query}")
        result = verification(browser)
        assert result["state"] == "mismatch", query
        assert "MISMATCH" in result["verdict"]
        assert result["published"] == receipt["hash"]
        assert result["computed"] == "0x" + hashlib.sha256(rfc8785.dumps(core)).hexdigest() != receipt["hash"]
        text = main_text(browser)
        assert receipt["hash"] in text and result["computed"] in text
        assert "inconsistent" in text  # the server-side recompute of amounts catches it too
    screenshot(browser, "desktop-receipt-tampered")


def test_phone_layout(phone, world):
    width = phone.execute_script("return window.innerWidth")
    assert width == PHONE["width"]
    for name, path in (("overview", "/"), ("receipt", f"/receipts/{world.receipts['settled']['core']['job_id']}"),
                       ("workers", "/workers"), ("receipts", "/receipts")):
        load(phone, world.url + path)
        if name == "receipt":
            assert verification(phone)["state"] == "match"
        # Nothing wider than the screen: tables turn into cards, hashes wrap.
        overflow = phone.execute_script("return document.documentElement.scrollWidth")
        assert overflow <= width, (name, overflow)
        screenshot(phone, f"phone-{name}")
