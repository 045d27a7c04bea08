"""The console in real headless Chromium against a real `inferstack serve`: every page loads
cleanly at desktop and phone widths, search, look-ups, the model graph, Try it (checked
against `inferstack infer`), escaping of values people wrote, and the live Health page.

Screenshots of every page are saved (see conftest.screenshots):
    INFERSTACK_CONSOLE_SCREENSHOTS=docs/console pytest tests/browser
"""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect

from inferstack.client import FeatureStoreClient
from inferstack.sampledata.generate import FULL_SIZES, GROUP_FILES
from inferstack.server.supervisor import free_port
from tests.browser.conftest import DESKTOP, PHONE, Tab, open_tab
from tests.ranker import ranker_config, ranker_sample
from tests.servers import RunningServer, inferstack, start_server

SCALE = 0.01
PRODUCTS = int(FULL_SIZES["product"] * SCALE)
MISSING_PRODUCT = PRODUCTS + 77
HTML_TITLE = '<img src=x onerror="document.title=\'owned\'"><b>bold</b> & "quotes"'
HTML_DESCRIPTION = "Headline shown to shoppers, <i>may hold HTML</i>"
NOTES_V1 = f"""
entities:
  - name: note
    keys: [{{name: note_id, type: int64}}]
    description: "Notes with <b>markup</b> in them"
feature_groups:
  - name: notes
    entity: note
    features:
      - {{name: title, type: string, description: "{HTML_DESCRIPTION}"}}
      - {{name: payload, type: bytes}}
      - {{name: embedding, type: "float32[8]"}}
"""
NOTES_V2 = NOTES_V1 + '      - {name: lang, type: string, default: en, description: "Language"}\n'


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ranker_sample(tmp_path_factory.mktemp("ranker"), scale=SCALE)


@pytest.fixture(scope="module")
def server(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The sample ranker, plus a `notes` group (two schema versions) whose values and
    description look like HTML."""
    data = tmp_path_factory.mktemp("data")
    inferstack("apply", "-f", str(sample), data_dir=data)
    for group, file in GROUP_FILES.items():
        inferstack("ingest", "-g", group, str(sample / file), data_dir=data)
    for number, text in enumerate((NOTES_V1, NOTES_V2), start=1):
        notes = data / f"notes-v{number}.yaml"
        notes.write_text(text)
        inferstack("apply", "-f", str(notes), data_dir=data)
    running = start_server(data, "--cache-mb", "16")  # Health shows its hit rate
    with FeatureStoreClient(running.grpc_target) as client:
        client.persist(
            "notes",
            {"note_id": [1]},
            {
                "title": [HTML_TITLE],
                "payload": [b"\x00<script>\xff"],
                "embedding": np.arange(8, dtype=np.float32).reshape(1, 8) / 4,
                "lang": ["fr"],
            },
        )
    yield running
    assert running.stop() == 0


def url(server: RunningServer, path: str) -> str:
    return f"{server.http_base}{path}"


def visit(tab: Tab, address: str) -> Page:
    tab.page.goto(address)
    tab.page.wait_for_load_state("load")
    return tab.page


PAGES = {
    "catalog": "/ui/catalog",
    "lookup": f"/ui/lookup?entity=product&product_id=1%0A2%0A{MISSING_PRODUCT}",
    "models": "/ui/models/ranker#node-fetch-affinity",
    "try": "/ui/try?model=ranker&user_id=42&product_ids=1,2,3,4,5,6,7,8"
    f",{MISSING_PRODUCT}&feature=product.rating&feature=affinity.clicks_30d&run=1",
    "health": "/ui/health",
}


@pytest.mark.parametrize(("width", "viewport"), [("desktop", DESKTOP), ("phone", PHONE)])
def test_every_page_loads_without_errors_and_fits_the_window(
    server: RunningServer, browser: Browser, screenshots: Path, width: str, viewport: dict[str, int]
) -> None:
    tab = open_tab(browser, viewport)
    try:
        for name, path in PAGES.items():
            page = visit(tab, url(server, path))
            expect(page.locator("h1")).to_be_visible()
            assert page.locator(".error").count() == 0, page.locator(".error").all_inner_texts()
            # Wide tables and the graph scroll inside their own boxes, not the page.
            page_width = page.evaluate("document.documentElement.scrollWidth")
            assert page_width <= viewport["width"], f"{name} is {page_width}px wide"
            page.screenshot(path=str(screenshots / f"{name}-{width}.png"))
        assert tab.problems.messages == []
    finally:
        tab.page.close()


def test_pages_are_linked_from_every_page(server: RunningServer, tab: Tab) -> None:
    page = visit(tab, url(server, "/ui"))
    assert page.url.endswith("/ui/catalog")
    for label, heading in [
        ("Look up", "Look up"),
        ("Models", "Models"),
        ("Try it", "Try it"),
        ("Health", "Health"),
        ("Catalog", "Catalog"),
    ]:
        nav = page.get_by_role("navigation", name="pages")
        nav.get_by_role("link", name=label, exact=True).click()
        expect(page.locator("h1")).to_have_text(heading)
    assert tab.problems.messages == []


def test_catalog_search_finds_a_feature_by_name_and_by_description(
    server: RunningServer, tab: Tab
) -> None:
    page = visit(tab, url(server, "/ui/catalog"))
    spend = page.locator("#feature-user_category_affinity-spend_90d")
    price = page.locator("#feature-product_stats-price")
    expect(spend).to_be_visible()
    page.locator("#search").fill("spend")
    expect(spend).to_be_visible()
    expect(price).to_be_hidden()
    expect(page.locator("#group-product_stats")).to_be_hidden()
    expect(page.locator("#search-count")).to_contain_text("1 of ")
    page.locator("#search").fill("SHOPPERS")  # description, any case
    expect(page.locator("#feature-notes-title")).to_be_visible()
    expect(spend).to_be_hidden()
    # Without the script: the server filters the same way.
    page = visit(tab, url(server, "/ui/catalog?q=spend_90d"))
    expect(spend).to_be_visible()
    expect(price).to_be_hidden()
    assert tab.problems.messages == []


def test_catalog_shows_groups_versions_and_their_diff(server: RunningServer, tab: Tab) -> None:
    page = visit(tab, url(server, "/ui/catalog"))
    notes = page.locator("#group-notes")
    expect(notes.locator("dl.facts")).to_contain_text("v2, 4 features")
    notes.locator("summary").click()
    expect(notes.locator('li[data-version="2"] .added')).to_have_text("+ lang string")
    expect(page.locator("#feature-notes-lang")).to_contain_text('"en"')  # its default
    group = page.locator("#group-product_stats")
    expect(group.locator("dl.facts")).to_contain_text("row TTL7d")
    expect(group.locator("dl.facts")).to_contain_text("cached 1m")
    expect(page.locator("#feature-user_profile-embedding")).to_contain_text("float32[16]")


def test_lookup_shows_stored_values_and_a_missing_key(server: RunningServer, tab: Tab) -> None:
    with FeatureStoreClient(server.grpc_target) as client:
        stored = client.retrieve("product", {"product_id": [2]}, ["product_stats.price"])
    price = float(stored["product_stats.price"][0])
    page = visit(tab, url(server, "/ui/lookup?entity=product"))
    page.locator('textarea[name="product_id"]').fill(f"2\n{MISSING_PRODUCT}")
    page.get_by_role("button", name="Look up").click()
    group = page.locator('section[data-group="product_stats"]')
    statuses = group.locator("thead [data-status]")
    expect(statuses).to_have_text(["found", "missing"])
    cells = group.locator('tr[data-feature="price"] td')
    assert float(cells.nth(0).inner_text()) == pytest.approx(price, rel=1e-5)
    expect(cells.nth(1)).to_have_class(re.compile("defaulted"))
    expect(cells.nth(1)).to_have_text("0")
    assert tab.problems.messages == []


def test_lookup_of_a_composite_key_and_a_bad_key(server: RunningServer, tab: Tab) -> None:
    page = visit(tab, url(server, "/ui/lookup?entity=user_category"))
    page.locator('textarea[name="user_id"]').fill("1\n1")
    page.locator('textarea[name="category_id"]').fill("c1\nno such category")
    page.get_by_role("button", name="Look up").click()
    expect(page.locator("th.key").nth(1)).to_contain_text("1 · no such category")
    expect(page.locator("thead [data-status]").nth(1)).to_have_text("missing")
    response = page.goto(url(server, "/ui/lookup?entity=user&user_id=abc"))
    assert response is not None and response.status == 400
    expect(page.locator(".error")).to_contain_text("user_id")


def test_values_that_look_like_html_are_shown_as_text(server: RunningServer, tab: Tab) -> None:
    page = visit(tab, url(server, "/ui/lookup?entity=note&note_id=1"))
    title = page.locator('tr[data-feature="title"] td')
    expect(title).to_have_text(f'"{HTML_TITLE}"')
    assert title.locator("b, img").count() == 0  # not parsed as markup
    expect(page.locator('tr[data-feature="payload"] td')).to_have_text('b"\\x00<script>\\xff"')
    expect(page.locator('tr[data-feature="embedding"] td')).to_have_text(
        "[0, 0.25, 0.5, 0.75, \u2026] \u00d78"
    )
    assert page.title() != "owned"
    catalog = visit(tab, url(server, "/ui/catalog"))
    expect(catalog.locator("#feature-notes-title")).to_contain_text(HTML_DESCRIPTION)
    assert catalog.locator("#feature-notes-title i").count() == 0
    assert catalog.title() != "owned"
    assert tab.problems.messages == []


def test_model_graph_has_a_node_per_step_and_the_derived_key_edge(
    server: RunningServer, sample: Path, tab: Tab
) -> None:
    config = ranker_config(sample)
    page = visit(tab, url(server, "/ui/models/ranker"))
    svg = page.locator("svg.plan")

    def names(kind: str) -> list[str]:
        return sorted(
            svg.locator(f'g.node[data-kind="{kind}"]').evaluate_all(
                "nodes => nodes.map(n => n.dataset.name)"
            )
        )

    assert names("model") == sorted(m["name"] for m in config["models"])
    assert names("expression") == sorted(config["expressions"])
    assert names("fetch") == sorted(f["name"] for f in config["fetches"])
    assert names("context") == sorted(c["name"] for c in config["context"])
    assert names("response") == ["response"]
    derived = svg.locator('g.edge-label[data-source="fetch:product"][data-target="fetch:affinity"]')
    expect(derived).to_have_text("product.category_id → category_id")
    expect(svg.locator('g.node[data-id="fetch:affinity"]')).to_contain_text("entity user_category")
    # Concurrent fetches (stage 1) are drawn in one column, the derived fetch after them.
    x = {
        name: float(svg.locator(f'g.node[data-id="fetch:{name}"] rect').get_attribute("x") or 0)
        for name in ("user", "product", "affinity")
    }
    assert x["user"] == x["product"] < x["affinity"]
    detail = page.locator("#node-fetch-affinity")
    expect(detail).to_be_hidden()
    svg.locator('g.node[data-id="fetch:affinity"]').click()
    expect(detail).to_be_visible()
    expect(detail).to_contain_text("user_category_affinity.affinity")
    svg.locator('g.node[data-id="model:pctr"]').click()
    expect(page.locator("#node-model-pctr")).to_contain_text("onnx")
    assert tab.problems.messages == []


def test_try_it_ranks_like_inferstack_infer(
    server: RunningServer, tab: Tab, tmp_path: Path
) -> None:
    products = [*range(3, 40, 3), MISSING_PRODUCT]
    page = visit(tab, url(server, "/ui/try?model=ranker"))
    page.locator('input[name="user_id"]').fill("17")
    page.locator('textarea[name="product_ids"]').fill(", ".join(map(str, products)))
    page.get_by_role("button", name="Rank", exact=True).click()
    rows = page.locator("#ranked tbody tr")
    expect(rows).to_have_count(len(products))
    shown = rows.evaluate_all(
        """rows => rows.map(r => [r.dataset.candidate,
             Number(r.querySelector('td[data-output="score"]').dataset.value)])"""
    )
    cli = inferstack(
        "infer",
        "ranker",
        "user_id=17",
        "product_ids=" + ",".join(map(str, products)),
        "--json",
        "--top",
        str(len(products)),
        "--target",
        server.grpc_target,
        data_dir=tmp_path,
    )
    answer = json.loads(cli.stdout)
    ids = answer["candidates"]["product_ids"]
    expected = [(ids[row], answer["outputs"]["score"][row]) for row in answer["top"]]
    assert [candidate for candidate, _ in shown] == [candidate for candidate, _ in expected]
    np.testing.assert_allclose(
        [score for _, score in shown], [score for _, score in expected], rtol=1e-6
    )
    # The product that is not stored read its features as defaults, and only it.
    defaulted = page.locator('td[data-feature="product.price"][data-defaulted]')
    expect(defaulted).to_have_count(1)
    expect(
        page.locator(f'tr[data-candidate="{MISSING_PRODUCT}"] td[data-feature="product.price"]')
    ).to_have_attribute("data-defaulted", "true")
    stages = page.locator("table.waterfall tr").evaluate_all(
        "rows => rows.map(r => r.dataset.stage)"
    )
    assert stages[0] == "context" and "model pctr" in stages and "expression score" in stages
    assert tab.problems.messages == []


def test_try_it_with_random_candidates_and_over_the_limit(server: RunningServer, tab: Tab) -> None:
    page = visit(tab, url(server, "/ui/try?model=ranker"))
    page.locator('input[name="user_id"]').fill("5")
    page.locator('input[name="highest"]').fill(str(PRODUCTS))
    page.get_by_role("button", name="Rank 100 random candidates").click()
    rows = page.locator("#ranked tbody tr")
    expect(rows).to_have_count(100)
    ids = rows.evaluate_all("rows => rows.map(r => Number(r.dataset.candidate))")
    assert len(set(ids)) == 100 and all(1 <= i <= PRODUCTS for i in ids)
    drawn = page.locator('textarea[name="product_ids"]').input_value().split()
    assert sorted(map(int, drawn)) == sorted(ids)  # kept in the form, to run again
    # The same limit as any caller's: at most max_rows candidates.
    too_many = ",".join(str(i) for i in range(1, 1002))
    response = page.goto(
        url(server, f"/ui/try?model=ranker&user_id=5&product_ids={too_many}&run=1")
    )
    assert response is not None and response.status == 429
    expect(page.locator(".error")).to_contain_text("at most 1000")


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("random=-1", "'random' must be a whole number from 1 to 1000"),
        ("random=5000", "'random' must be a whole number from 1 to 1000"),
        ("random=10&highest=9223372036854775808", "'highest' must be a whole number"),
        ("random=10&highest=0", "'highest' must be a whole number"),
        ("random=%D9%A4%D9%A2", "'random' must be a whole number"),  # Arabic-Indic 42
    ],
)
def test_try_it_refuses_random_draws_it_cannot_make(
    server: RunningServer, query: str, named: str
) -> None:
    # Each used to be a 500 (numpy refused the draw).
    address = url(server, f"/ui/try?model=ranker&user_id=5&{query}")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(address, timeout=10)
    assert refused.value.code == 400
    assert named in html.unescape(refused.value.read().decode())


def test_health_refreshes_with_live_numbers_and_systems(
    server: RunningServer, tab: Tab, screenshots: Path
) -> None:
    page = visit(tab, url(server, "/ui/health"))
    systems = page.locator("table.systems")
    expect(systems.locator('tr[data-role="feature storage"] .state')).to_have_text("up")
    expect(systems.locator('tr[data-role="config store"] .state')).to_have_text("up")
    expect(systems.locator('tr[data-role="model"]')).to_contain_text("ranker")
    body = json.dumps(
        {"entity": "product", "keys": {"product_id": [1, 2, 3]}, "features": []}
    ).encode()
    rate = page.locator('tr[data-method="http_retrieve"] td').nth(1)
    deadline = time.monotonic() + 30
    while True:  # calls keep coming until a refresh shows their rate
        for _ in range(10):
            with urllib.request.urlopen(url(server, "/v1/retrieve"), body, timeout=10) as answer:
                assert answer.status == 200
        if (
            rate.count()
            and re.fullmatch(r"[\d.,]+/s", rate.inner_text())
            and rate.inner_text() != "0.0/s"
        ):
            break
        assert time.monotonic() < deadline, page.locator("#health-panel").inner_text()
        time.sleep(0.5)
    expect(page.locator("#requests-per-second")).not_to_have_text("\u2013")
    expect(page.locator('[data-cache-level="local"]')).to_have_text(re.compile(r"\d+\.\d %"))
    expect(systems.locator('tr[data-role="local cache"] .state')).to_have_text("up")
    page.screenshot(path=str(screenshots / "health-desktop.png"))  # with live numbers
    assert tab.problems.messages == []


def test_inferstack_ui_serves_the_console_on_its_own(server: RunningServer) -> None:
    data = Path(server.log).parent
    port = free_port("127.0.0.1")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inferstack.cli.main",
            "ui",
            "--data-dir",
            str(data),
            "--port",
            str(port),
            "--metrics-url",
            url(server, "/metrics"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ},
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/ui" in first, first + (process.stdout.read() or "")
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/ui/catalog", timeout=10) as answer:
            assert "user_category_affinity" in answer.read().decode()
        query = "/ui/try?model=ranker&user_id=3&product_ids=1,2,3&run=1"
        with urllib.request.urlopen(base + query, timeout=30) as answer:
            assert 'id="ranked"' in answer.read().decode()
        body = json.dumps({"entity": "user", "keys": {"user_id": [1]}}).encode()
        urllib.request.urlopen(url(server, "/v1/retrieve"), body, timeout=10).close()
        with urllib.request.urlopen(f"{base}/ui/health", timeout=10) as answer:
            assert "http_retrieve" in answer.read().decode()  # the server's own calls
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/ui/models/nope", timeout=10)
        assert missing.value.code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
