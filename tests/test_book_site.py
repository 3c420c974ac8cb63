"""The built lab book (`make book`, build/book/) in a real browser: every lesson page loads from a local
http.server on 127.0.0.1, shows its headings and every figure its executed notebook holds, and no error
output; every internal link and anchor of the site resolves; nothing is fetched from anywhere else.
`make test-book` runs it after building; `make test` leaves it out (it needs the built book)."""

from __future__ import annotations

import functools
import http.server
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import nbformat
import pytest

from .notebooks import headings, lessons

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "build" / "book"
EXECUTED = ROOT / "build" / "book-src" / "lessons"
SHOTS = ROOT / "build" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
IMAGES = ("image/png", "image/jpeg", "image/svg+xml")
EXPECTED_STDERR = {  # lesson -> how many stderr blocks its page may show: each one is part of the lesson
    "05_pubsub": 1,  # "a listener that cannot tell it was disconnected": redis-py's listener thread dies, and
                     # the next paragraph points at "the traceback above"
}
pytestmark = pytest.mark.book


def executed_lessons() -> list[Path]:
    return sorted(EXECUTED.glob("*.ipynb"))


def figures_in(nb: nbformat.NotebookNode) -> int:
    """How many figures the executed notebook's outputs hold."""
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    return sum(any(m in o.get("data", {}) for m in IMAGES) for o in outputs)


def h2_texts(nb: nbformat.NotebookNode) -> list[str]:
    return [normal(h) for h in headings(nb, 2)]


def normal(heading: str) -> str:
    """A heading compared as text: without code marks, stars (bold, italic) or the page's "#" link."""
    return heading.replace("`", "").replace("*", "").strip().rstrip("#").strip()


class Links(HTMLParser):
    """The ids a page defines and the links (a href, img src, link href, script src) it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []  # (tag, address)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(found["id"])
        if tag == "a" and found.get("name"):
            self.ids.add(found["name"])
        wanted = {"a": "href", "link": "href", "img": "src", "script": "src"}.get(tag)
        if wanted and found.get(wanted):
            self.links.append((tag, found[wanted]))


@functools.cache
def parsed(page: Path) -> Links:
    links = Links()
    links.feed(page.read_text())
    return links


def broken_links(site: Path) -> list[str]:
    """Every internal link of every page whose file or anchor does not exist; any link leaving the site
    that the page would load by itself (a script, a style sheet, an image) counts as broken too."""
    broken = []
    for page in sorted(p for p in site.rglob("*.html") if "_static" not in p.parts):  # _static: theme templates
        for tag, link in parsed(page).links:
            parts = urlsplit(link)
            if parts.scheme in ("http", "https", "mailto") or link.startswith("//"):
                if tag != "a":  # the page would load it by itself
                    broken.append(f"{page.relative_to(site)}: {link} (loaded from outside the site)")
                continue  # a link the reader may follow
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file() or not target.resolve().is_relative_to(site.resolve()):
                broken.append(f"{page.relative_to(site)}: {link} (no file)")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in parsed(target).ids:
                broken.append(f"{page.relative_to(site)}: {link} (no id {parts.fragment!r})")
    return broken


def test_the_book_was_built():
    assert (SITE / "index.html").is_file(), "no build/book/index.html: run `make book` first"
    assert executed_lessons(), "no executed lessons in build/book-src/lessons: run `make book` first"
    pages = {p.stem for p in (SITE / "lessons").glob("*.html")}
    assert pages == {p.stem for p in executed_lessons()} == {p.stem for p in lessons()}  # every lesson


def test_every_internal_link_and_anchor_resolves():
    assert not broken_links(SITE), "\n".join(broken_links(SITE))


def test_the_link_check_catches_a_missing_page_and_a_missing_anchor(tmp_path):
    (tmp_path / "index.html").write_text('<h1 id="top">x</h1><a href="#top">ok</a><a href="b.html#nope">bad</a>'
                                         '<a href="c.html">missing</a><a href="https://example.org/">out</a>')
    (tmp_path / "b.html").write_text('<h1 id="here">b</h1><a href="index.html#top">back</a>'
                                     '<script src="https://cdn.example.org/x.js"></script>')
    assert broken_links(tmp_path) == ["b.html: https://cdn.example.org/x.js (loaded from outside the site)",
                                      "index.html: b.html#nope (no id 'nope')", "index.html: c.html (no file)"]


@pytest.fixture(scope="module")
def site_url():
    """build/book/ served by http.server on 127.0.0.1 (a free port), for the length of the module."""
    handler = functools.partial(Quiet, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not here and could not be installed (needs root + apt-get)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, site_url):
    """A page whose every request to anywhere but the local server is refused and recorded."""
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    page.outside = []
    page.console_errors = []

    def only_local(route):
        if route.request.url.startswith(site_url):
            route.continue_()
        else:
            page.outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.on("console", lambda msg: page.console_errors.append(msg.text) if msg.type == "error" else None)
    yield page
    context.close()


def open_page(page, url: str) -> None:
    response = page.goto(url, wait_until="load")
    assert response is not None and response.ok, f"{url}: HTTP {response and response.status}"


def broken_images(page) -> list[str]:
    return page.eval_on_selector_all("article img", "imgs => imgs.filter(i => !i.complete || i.naturalWidth === 0)"
                                                 ".map(i => i.getAttribute('src'))")


@pytest.mark.parametrize("executed", executed_lessons(), ids=lambda p: p.stem)
def test_lesson_page_shows_its_headings_and_figures_and_no_error(page, site_url, executed):
    nb = nbformat.read(executed, as_version=4)
    open_page(page, urljoin(site_url, f"lessons/{executed.stem}.html"))
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"book-{executed.stem}.png"))
    title = next(c.source for c in nb.cells if c.cell_type == "markdown").splitlines()[0].lstrip("# ").strip()
    assert page.locator("article h1").first.inner_text().strip().rstrip("#").strip() == title
    shown = [normal(h) for h in page.locator("article h2").all_inner_texts()]
    missing = [h for h in h2_texts(nb) if h not in shown]
    assert not missing, f"headings not on the page: {missing}"
    figures = figures_in(nb)
    images = page.locator("article .cell_output img")
    assert images.count() >= figures, f"{figures} figures in the run, {images.count()} on the page"
    assert not broken_images(page), f"images that did not load: {broken_images(page)}"
    if figures:
        images.first.scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / f"book-{executed.stem}-figure.png"))
    errors = page.locator("article .output.error, article .output.traceback")
    assert errors.count() == 0, f"a failed cell on the page: {errors.first.inner_text()[:1500]}"
    stderr = page.locator("article .output.stderr")
    assert stderr.count() <= EXPECTED_STDERR.get(executed.stem, 0), \
        f"stderr output on the page: {stderr.first.inner_text()[:1500]}"
    outside_stderr = page.locator("article").evaluate(
        "a => { const c = a.cloneNode(true); c.querySelectorAll('.output.stderr').forEach(e => e.remove());"
        " return c.innerText; }")
    assert "Traceback (most recent call last)" not in outside_stderr
    assert not page.outside, f"the page asked for something outside the site: {page.outside}"
    assert not page.console_errors, f"console errors: {page.console_errors}"


@pytest.mark.parametrize("name", ["index", "benchmarks", "matrix", "mistakes"])
def test_landing_and_reference_pages_load(page, site_url, name):
    open_page(page, urljoin(site_url, f"{name}.html"))
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"book-{name}.png"), full_page=name == "index")
    assert page.locator("article h1").count() == 1
    assert not broken_images(page)
    assert not page.outside, f"the page asked for something outside the site: {page.outside}"
    if name == "index":
        links = page.locator("article table a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
        assert sorted(links) == sorted(f"lessons/{p.stem}.html" for p in executed_lessons())
    if name == "benchmarks" and "Not run" not in page.locator("article").inner_text():
        assert page.locator("article table").count() >= 1 and page.locator("article img").count() >= 1


def test_the_book_opens_from_the_file_system(browser):
    """No server needed: a reader can open build/book/index.html directly, and its lesson pages' figures load."""
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    try:
        open_file = (SITE / "index.html").as_uri()
        page.goto(open_file, wait_until="load")
        first = executed_lessons()[0]
        page.locator(f"article table a[href='lessons/{first.stem}.html']").click()
        page.wait_for_load_state("load")
        assert page.url == (SITE / "lessons" / f"{first.stem}.html").as_uri()
        assert page.locator("article h1").count() == 1 and not broken_images(page)
    finally:
        context.close()
