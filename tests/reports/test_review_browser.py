"""The review site in a real browser: Debian's chromium, headless, driven by Playwright.

The site opens from disk and makes no network request; a click on a scatter point shows that
cluster's vertex samples with the trigger tokens highlighted; corpus text containing
``<script>`` shows as text; the filters hide exactly the clusters they should (counted from the
site's data in Python, not by the page); a screenshot is saved.

Runs on the tiny site of ``review_inputs``, or on any built site: ``FEATGEO_REVIEW_SITE=demo_out/
review FEATGEO_SCREENSHOT=docs/images/review.png pytest tests/reports/test_review_browser.py``
(that is how the README's screenshot is made). Without chromium the tests skip with the reason;
``.ci/run`` installs it and sets FEATGEO_REQUIRE_BROWSER=1, where a missing browser fails.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"no {CHROMIUM}: install Debian's chromium (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _missing()
    if reason:
        if os.environ.get("FEATGEO_REQUIRE_BROWSER"):
            pytest.fail(f"FEATGEO_REQUIRE_BROWSER is set but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def site(request) -> Path:
    given = os.environ.get("FEATGEO_REVIEW_SITE")
    if given:
        return Path(given).resolve()
    return Path(request.getfixturevalue("review_inputs")["site"]).resolve()


class Page:
    """One browser tab on the site, recording every request and script error."""

    def __init__(self, browser, site: Path):
        self.site = site
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on(
            "console", lambda m: self.errors.append(m.text) if m.type == "error" else None
        )
        # anything but the site's own files is refused (and recorded above)
        self.context.route("**/*", self._route)

    def _route(self, route):
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            route.abort()

    def open(self, name: str):
        self.page.goto((self.site / name).as_uri())
        self.page.wait_for_load_state("load")
        return self.page

    def network(self) -> list[str]:
        return [u for u in self.requests if not u.startswith("file://")]

    def close(self):
        self.context.close()


@pytest.fixture
def tab(browser, site):
    tab = Page(browser, site)
    yield tab
    tab.close()


def site_data(site: Path) -> dict:
    text = (site / "data" / "review.js").read_text(encoding="utf-8")
    prefix = "window.FEATGEO_REVIEW = "
    assert text.startswith(prefix) and text.rstrip().endswith(";")
    return json.loads(text[len(prefix) :].rstrip().rstrip(";"))


def cluster_detail(site: Path, n: int, cid: int) -> dict:
    text = (site / "data" / "clusters" / f"n{n}" / f"c{cid}.js").read_text(encoding="utf-8")
    head = f"featgeoReview.clusterLoaded({n}, {cid}, "
    assert text.startswith(head) and text.rstrip().endswith(");")
    return json.loads(text[len(head) :].rstrip()[:-2])


def plotted(c: dict) -> bool:
    return c["recon_strength"] is not None and c["arch_strength"] is not None


def shown_as(piece: str) -> str:
    """How the page shows a trigger token: itself, or its whitespace made visible."""
    if piece.strip():
        return piece
    marks = piece.replace("\n", "↵").replace("\t", "⇥").replace(" ", "␣") or "∅"
    return marks + ("\n" if "\n" in piece else "")


def isolated_stage3_cluster(page, data: dict) -> tuple[int, int]:
    """A Stage 3 cluster whose point lies farthest from every other point (a click on it
    cannot hit a neighbour)."""
    best, best_gap = None, -1.0
    for s in data["summaries"]:
        n = s["n_clusters"]
        page.evaluate(f"document.getElementById('scatter-n{n}').scrollIntoView()")
        ids = [c["id"] for c in s["clusters"] if plotted(c)]
        found = page.evaluate(
            f"ids => ids.map(id => featgeoReview.pointPosition({n}, id))", ids
        )
        where = dict(zip(ids, found, strict=True))
        for c in s["clusters"]:
            if not (c.get("stage3") and c["stage3"]["samples"] and plotted(c)):
                continue
            me = where[c["id"]]
            gap = min(
                (math.dist((me["x"], me["y"]), (p["x"], p["y"])) for i, p in where.items()
                 if i != c["id"]),  # fmt: skip
                default=1e9,
            )
            if gap > best_gap:
                best, best_gap = (n, c["id"]), gap
    assert best is not None, "the site has no Stage 3 cluster with vertex samples"
    return best


def test_index_links_every_page_and_nothing_reaches_the_network(tab):
    page = tab.open("index.html")
    links = page.eval_on_selector_all("ul.pages a", "els => els.map(e => e.getAttribute('href'))")
    info = json.loads((tab.site / "review.json").read_text())
    assert links == info["pages"] and links
    for href in links:
        page.click(f"ul.pages a[href='{href}']")
        page.wait_for_load_state("load")
        assert page.url.endswith(href)
        page.go_back()
    assert tab.network() == [] and tab.errors == []
    if "aanet.html" in links:  # the vendored plotly.js, from disk
        assert any(u.endswith("/vendor/plotly.min.js") for u in tab.requests)


def test_a_click_on_a_point_shows_that_clusters_vertex_samples(tab, tmp_path):
    page = tab.open("aanet.html")
    data = site_data(tab.site)
    n, cid = isolated_stage3_cluster(page, data)
    page.evaluate(f"document.getElementById('scatter-n{n}').scrollIntoView()")
    where = page.evaluate(f"featgeoReview.pointPosition({n}, {cid})")
    page.mouse.click(where["x"], where["y"])  # a real click on the plotted point
    page.wait_for_selector("#vertex-samples", timeout=10_000)
    assert page.get_attribute("#detail", "data-key") == f"{n}:{cid}"

    detail = cluster_detail(tab.site, n, cid)["vertex_samples"]
    vertices = page.locator("#vertex-samples .vertex")
    assert vertices.count() == len(detail["vertices"])
    for i, vertex in enumerate(detail["vertices"]):
        node = vertices.nth(i)
        assert node.get_attribute("data-vertex") == str(vertex["vertex"])
        samples = node.locator(".sample")
        assert samples.count() == len(vertex["samples"])
        for j, sample in enumerate(vertex["samples"]):
            triggers = samples.nth(j).locator(".trigger")
            shown = triggers.all_inner_texts()
            expected = [shown_as(sample["pieces"][t["position"]]) for t in sorted(
                sample["triggers"], key=lambda t: t["position"])]  # fmt: skip
            # inner_text trims the spaces a piece may start with; textContent keeps them
            texts = [triggers.nth(k).evaluate("e => e.textContent") for k in range(len(shown))]
            assert texts == expected
    assert page.locator("#vertex-samples .trigger").count() > 0
    shot = Path(os.environ.get("FEATGEO_SCREENSHOT") or tmp_path / "review.png")
    page.evaluate("window.scrollTo(0, 0)")
    # the scatter, the clicked cluster's panel and its first vertex samples, in one picture
    page.screenshot(path=str(shot), full_page=True, clip={"x": 0, "y": 0, "width": 1400,
                                                           "height": 2600})  # fmt: skip
    assert shot.stat().st_size > 10_000
    assert tab.network() == [] and tab.errors == []


def test_corpus_text_is_shown_as_text_never_run(tab):
    page = tab.open("aanet.html")
    data = site_data(tab.site)
    keys = [(s["n_clusters"], c["id"]) for s in data["summaries"] for c in s["clusters"]
            if c.get("stage3") and c["stage3"]["samples"]]  # fmt: skip
    hostile = 0
    for n, cid in keys:
        page.evaluate(f"featgeoReview.show({n}, {cid})")
        page.wait_for_selector(f"#detail[data-key='{n}:{cid}'][data-loaded='1']")
        buttons = page.locator("#vertex-samples .expand")
        if buttons.count():  # whole chunks: every character of the records is on the page
            buttons.first.click()
            assert buttons.first.inner_text() == "context only"
            page.eval_on_selector_all(
                "#vertex-samples .expand", "bs => bs.slice(1).forEach(b => b.click())"
            )
        assert page.locator("#detail script, #detail img, #detail iframe").count() == 0
        text = page.inner_text("#vertex-samples") if page.locator("#vertex-samples").count() else ""
        detail = cluster_detail(tab.site, n, cid)["vertex_samples"]
        for vertex in detail["vertices"]:
            for sample in vertex["samples"]:
                if "<script>" in "".join(sample["pieces"]):
                    assert "<script>" in text  # shown literally
                    hostile += 1
    assert page.evaluate("typeof window.__pwned") == "undefined"
    if not os.environ.get("FEATGEO_REVIEW_SITE"):  # review_inputs' corpus is hostile throughout
        assert hostile > 0
    assert tab.network() == [] and tab.errors == []


def visible_count(page) -> int:
    return int(page.inner_text("#visible-count").split()[0])


def points_on(page, n: int) -> int:
    return page.locator(f"#scatter-n{n} .scatterlayer .point").count()


def test_filters_hide_exactly_the_clusters_they_should(tab):
    page = tab.open("aanet.html")
    data = site_data(tab.site)
    summaries = {s["n_clusters"]: s["clusters"] for s in data["summaries"]}
    total = sum(len(cs) for cs in summaries.values())
    assert visible_count(page) == total
    for n, clusters in summaries.items():
        assert points_on(page, n) == sum(plotted(c) for c in clusters)

    page.uncheck("#filter-category-filtered")  # clusters failing a quality filter
    page.wait_for_timeout(200)
    passing = {n: [c for c in cs if not c["failed_filters"]] for n, cs in summaries.items()}
    assert visible_count(page) == sum(len(cs) for cs in passing.values())
    for n in summaries:
        assert points_on(page, n) == sum(plotted(c) for c in passing[n])
    page.check("#filter-category-filtered")

    first = min(summaries)
    page.uncheck(f"#filter-n-{first}")
    page.wait_for_timeout(200)
    assert visible_count(page) == total - len(summaries[first])
    assert not page.is_visible(f"#scatter-n{first}")
    page.check(f"#filter-n-{first}")

    ranks = sorted({c["decoder_rank"] for cs in summaries.values() for c in cs} - {None})
    cut = ranks[len(ranks) // 2]
    page.fill("#filter-rank-min", str(cut))
    page.wait_for_timeout(200)
    keep = [c for cs in summaries.values() for c in cs if (c["decoder_rank"] or -1) >= cut]
    assert 0 < visible_count(page) == len(keep) < total
    rows = page.eval_on_selector_all("#cluster-list tbody tr", "r => r.map(e => e.dataset.key)")
    assert len(rows) == min(len(keep), 500)
    page.fill("#filter-rank-min", "")

    if data["stage3"]:
        page.check("#filter-stage3")
        page.wait_for_timeout(200)
        assert visible_count(page) == sum(bool(c.get("stage3")) for cs in summaries.values()
                                          for c in cs)  # fmt: skip
    assert tab.network() == [] and tab.errors == []


def test_the_sparsity_page_shows_the_reports_tables_and_figures(tab):
    if not (tab.site / "sparsity.html").is_file():
        pytest.skip("this site was built without --sparsity-report")
    page = tab.open("sparsity.html")
    assert page.locator("table").count() >= 1
    images = page.locator("img")
    assert images.count() >= 1
    for i in range(images.count()):  # every figure decoded (a broken one has no natural width)
        assert images.nth(i).evaluate("e => e.complete && e.naturalWidth > 0")
    assert tab.network() == [] and tab.errors == []


def test_the_site_works_after_being_moved(browser, site, tmp_path):
    moved = tmp_path / "copied review"
    shutil.copytree(site, moved)
    tab = Page(browser, moved)
    try:
        page = tab.open("aanet.html")
        assert visible_count(page) > 0
        assert tab.network() == [] and tab.errors == []
    finally:
        tab.close()
