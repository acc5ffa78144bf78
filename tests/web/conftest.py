"""The web app over the demo region (``mercia.demo``), in-process and, for the browser, on a port."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import tests.conftest as root_conftest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")



@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """A small synthetic region with one person per role and the demo projects (built once; tests
    add to it but leave what others rely on in place)."""
    from mercia.demo import build_demo

    built = build_demo(tmp_path_factory.mktemp("demo"), persons=1500, seed=7)
    yield built
    built.store.close()


@pytest.fixture(scope="module")
def app(demo):
    from mercia.services.state import ServerOptions
    from mercia.web.app import create_app

    return create_app(demo.store, ServerOptions(secure_cookies=False, job_workers=1, pseudonym_key_file=demo.key_file))


@pytest.fixture
def client(app):
    """A fresh browser-like client; not entered as a context manager, so the shared app's lifespan
    (which stops its job runner) is not run after each test."""
    return TestClient(app, base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def live_server(app):
    """The app served by uvicorn on a free port in a background thread."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        root_conftest.engine_missing("Chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        yield chromium
        chromium.close()


@contextmanager
def watched_page(browser, width: int = 1280, height: int = 900):
    """A page in a fresh browser context; any console error fails the test (a CSP violation shows there)."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield page
    context.close()
    assert not errors, f"browser console errors (a CSP violation shows here): {errors}"


@pytest.fixture
def page(browser):
    with watched_page(browser) as opened:
        yield opened


@pytest.fixture
def shots():
    ARTIFACTS.mkdir(exist_ok=True)

    def shoot(page, name: str) -> None:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    return shoot
