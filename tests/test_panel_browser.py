"""The classroom panel in a real headless Chromium against a real edgebotd on scripted models:
no console errors, the exact scripted answer streamed with the thinking collapsed, Markdown with
maths and highlighted code, follow-ups reusing the KV cache, conversations kept on the board,
Stop cancelling on the daemon, an HTML/JS answer that runs nothing, the token prompt beyond
loopback, the kiosk layout at 800x480 and the Chinese UI. Screenshots go to docs/ with
EDGEBOT_SCREENSHOTS=1 (so a test run does not rewrite them), else to pytest's temporary folder.

Browser runs are few and targeted (the machine is small): one Chromium per module plus one for zh.
"""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import APT_LINE, REPO, Daemon
from edgebot.testing.browser import Browser, missing
from edgebot.testing.script_model import DEFAULT_SCRIPT, Script, write_script_model

pytest.importorskip("aiohttp")
if missing():
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"the panel browser tests need a browser under CI: {missing()}; {APT_LINE}")
    pytest.skip(f"{missing()}; {APT_LINE}", allow_module_level=True)

TOKEN = "panel-test-token"
DOCS = REPO / "docs"


def screenshot_path(name: str, tmp: Path) -> str:
    """Where a screenshot goes: docs/ when asked for (``EDGEBOT_SCREENSHOTS=1``), else ``tmp``."""
    return str((DOCS if os.environ.get("EDGEBOT_SCREENSHOTS") == "1" else tmp) / name)

RICH = Script(
    think=("The user", " wants", " the system", " solved", " and some", " code."),
    close=("</th", "ink>\n\n"),
    answer=("Solve the system\n\n", "$$\\begin{cases} x + y = 3 \\\\ x - y = 1 \\end{cases}$$\n\n",
            "Adding the two equations gives \\(2x = 4\\), so **x = 2** and **y = 1**.\n\n", "In Python:\n\n",
            "```python\n", "def solve(s, d):\n", "    x = (s + d) / 2\n", "    return x, s - x\n", "```\n"),
)
XSS = Script(
    think=("Let me", " try."), close=("</th", "ink>\n\n"),
    answer=("Hi <img src=x onerror=\"window.__xss=1;document.title='owned'\">", " <script>window.__xss=2</script>",
            " [click me](javascript:window.__xss=3)", " <a href=\"javascript:window.__xss=4\">link</a>",
            " <svg onload=\"window.__xss=5\"></svg>", " <iframe src=\"javascript:window.__xss=6\"></iframe>",
            " <b onmouseover=\"window.__xss=7\">bold</b> done."),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp: Path, model: Path, extra: str = "") -> tuple[Daemon, str]:
    port = free_port()
    d = Daemon(tmp, model, f'[http]\nenabled = true\nport = {port}\nconversations_dir = "{tmp}/conversations"\n{extra}')
    return d, f"http://127.0.0.1:{port}"


def api(base: str, path: str, token: str = "") -> Any:
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    b = Browser()
    yield b
    b.close()


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    tmp = tmp_path_factory.mktemp("panel")
    d, base = start(tmp, write_script_model(tmp / "rich.gguf", RICH))
    yield d, base
    d.stop()


def ready(b: Browser, url: str) -> None:
    b.driver.get(url)
    b.wait(lambda: b.js("return document.body.dataset.ready === '1'"), 30, "the page to be interactive")


def ask(b: Browser, text: str) -> None:
    """Type ``text`` and press Enter; wait until the page has finished that answer."""
    before = int(b.js("return Number(document.body.dataset.answers || 0)"))
    b.driver.find_element("id", "input").send_keys(text + "\n")
    b.wait(lambda: int(b.js("return Number(document.body.dataset.answers || 0)")) > before, 60, "the answer to end")


WATCH = """
window.__seen = {open: false, paints: 0, thinking: false};
new MutationObserver(() => {
  for (const d of document.querySelectorAll('#log details')) window.__seen.open ||= d.open;
  window.__seen.thinking ||= /thinking…/.test(document.getElementById('log').innerText);
  window.__seen.paints++;
}).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true, attributes: true});
"""


def test_page_loads_clean_and_streams_the_scripted_answer(browser: Browser, rich: tuple[Daemon, str]) -> None:
    d, base = rich
    browser.console()
    ready(browser, base + "/")
    errors = [e for e in browser.console() if e["level"] == "SEVERE"]
    assert errors == [], errors
    browser.js(WATCH)
    ask(browser, "Solve x+y=3, x-y=1.")
    last = "document.querySelector('#log .exchange:last-child')"
    raw = browser.js(f"return {last}.dataset.raw")
    assert raw == RICH.answer_text  # exactly the scripted answer, nothing of the thinking
    seen = browser.js("return window.__seen")
    assert seen["open"] is False and seen["paints"] > 1  # streamed, the thinking never opened by itself
    details = browser.js(f"const d = {last}.querySelector('details'); return [d.open, d.hidden, "
                         "d.querySelector('summary').innerText, d.querySelector('.think-text').checkVisibility()]")
    assert details[0] is False and details[1] is False and details[3] is False
    assert re.fullmatch(r"thought for \d+ s", details[2]), details[2]
    # Markdown, maths and code as a classroom needs them
    assert browser.js(f"return {last}.querySelectorAll('.markdown .katex').length") >= 2
    assert browser.js(f"return {last}.querySelector('.markdown pre code.hljs .hljs-keyword').innerText") == "def"
    assert browser.js(f"return {last}.querySelector('.markdown strong').innerText") == "x = 2"
    # tapping the thinking line opens it
    browser.driver.find_element("css selector", "#log .exchange:last-child summary").click()
    assert browser.js(f"return {last}.querySelector('.think-text').innerText") == RICH.think_text
    browser.driver.find_element("css selector", "#log .exchange:last-child summary").click()
    assert [e for e in browser.console() if e["level"] == "SEVERE"] == []


def test_follow_up_reuses_the_cache(browser: Browser, rich: tuple[Daemon, str], tmp_path: Path) -> None:
    d, base = rich
    ready(browser, base + "/")
    browser.driver.find_element("id", "new").click()
    bus = d.connect()
    ask(browser, "First question, please?")
    bus.wait_idle()  # the session's history is re-based into the KV cache while the engine is idle
    ask(browser, "Other question, please?")  # as long as the first
    bus.close()
    (conv,) = [c for c in api(base, "/panel/api/conversations")["conversations"] if c["title"].startswith("First")]
    first, second = (e["stats"] for e in api(base, f"/panel/api/conversations/{conv['id']}")["exchanges"])
    assert second["cached_tokens"] > first["prompt_tokens"]  # the whole first exchange came from the cache
    # the follow-up evaluates only its own question: the first prompt without the BOS token
    assert second["prompt_tokens"] - second["cached_tokens"] == first["prompt_tokens"] - 1
    sessions = {s["name"]: s for s in json.loads(d.cli("status", "--json").stdout)["data"]["sessions"]}
    assert sessions[f"panel:{conv['id']}"]["turns"] == 2
    browser.driver.save_screenshot(screenshot_path("panel.png", tmp_path))


def test_conversations_are_kept_reopened_and_deleted(browser: Browser, rich: tuple[Daemon, str]) -> None:
    d, base = rich
    ready(browser, base + "/")
    titles = browser.js("return [...document.querySelectorAll('#list .open')].map(b => b.innerText)")
    assert "First question, please?" in titles
    browser.driver.find_element("id", "new").click()
    assert browser.js("return document.querySelectorAll('#log .exchange').length") == 0
    browser.js("[...document.querySelectorAll('#list .open')].find(b => b.innerText.startsWith('First')).click()")
    browser.wait(lambda: browser.js("return document.querySelectorAll('#log .exchange').length") == 2, 10,
                 "the reopened conversation")
    assert browser.js("return document.querySelector('#log .question').innerText") == "First question, please?"
    files = sorted((d.tmp / "conversations").glob("*.json"))
    assert len(files) == len(titles)
    browser.js("document.querySelector('#list li.current .delete').click()")
    browser.js("document.querySelector('#list li.current .delete').click()")  # the second tap confirms
    browser.wait(lambda: len(list((d.tmp / "conversations").glob("*.json"))) == len(titles) - 1, 10, "the deletion")
    browser.wait(lambda: "First question, please?" not in browser.js(
        "return [...document.querySelectorAll('#list .open')].map(b => b.innerText)"), 10, "the list without it")
    assert browser.js("return document.querySelectorAll('#log .exchange').length") == 0


def test_voice_line_push_to_talk_and_say_aloud(browser: Browser, rich: tuple[Daemon, str]) -> None:
    d, base = rich
    bridges = d.connect()  # where speech-in and speech-out would be: a real bus client
    bridges.send("subscribe", types=["listen", "say"])
    bridges.expect("ack")
    ready(browser, base + "/")
    browser.driver.find_element("id", "new").click()
    ask(browser, "Read it to the class.")
    browser.driver.find_element("css selector", "#log .exchange:last-child .say").click()
    assert bridges.expect("say", timeout=10)["data"]["text"] == RICH.answer_text
    browser.driver.find_element("id", "talk").click()
    assert bridges.expect("listen", timeout=10)["data"] == {}
    browser.wait(lambda: browser.js("return document.getElementById('voice').dataset.state") == "listening", 10,
                 "the voice line to say listening")
    bridges.send("audio-device", bridge="speech-in", state="ready", device="test")
    bridges.send("heard", text="what is two plus two", final=False)
    browser.wait(lambda: browser.js("return document.getElementById('voice').dataset.state") == "hearing", 10,
                 "the voice line to show what is heard")
    assert browser.js("return document.getElementById('voice-label').innerText") == "hearing"
    assert browser.js("return document.getElementById('voice-heard').innerText") == "“what is two plus two”"
    bridges.close()


def test_kiosk_fits_800x480(browser: Browser, rich: tuple[Daemon, str], tmp_path: Path) -> None:
    d, base = rich
    browser.viewport(800, 480)
    try:
        ready(browser, base + "/?kiosk=1")
        browser.driver.find_element("id", "new").click()
        ask(browser, "Solve it again, please.")
        box = browser.js("const r = document.getElementById('composer').getBoundingClientRect(); "
                         "const i = document.getElementById('input').getBoundingClientRect(); "
                         "return {top: r.top, bottom: r.bottom, inputTop: i.top, inputBottom: i.bottom, "
                         "page: document.scrollingElement.scrollHeight, h: innerHeight, w: innerWidth, "
                         "pageW: document.scrollingElement.scrollWidth, "
                         "font: parseFloat(getComputedStyle(document.body).fontSize), "
                         "main: document.getElementById('main').scrollHeight > document.getElementById('main').clientHeight}")
        assert box["h"] == 480 and box["w"] == 800
        assert box["page"] <= 480 and box["pageW"] <= 800  # the page itself never scrolls ...
        assert 0 < box["inputTop"] and box["bottom"] <= 480  # ... so the input stays on screen
        assert box["main"]  # the long answer scrolls inside the chat instead
        assert box["font"] >= 20
        send = browser.js("const r = document.getElementById('send').getBoundingClientRect(); return r.height")
        assert send >= 44  # a finger-sized target
        assert browser.js("return getComputedStyle(document.getElementById('side')).display") == "none"
        browser.driver.save_screenshot(screenshot_path("panel-kiosk.png", tmp_path))
    finally:
        browser.viewport(1100, 800)


def test_chinese_ui_for_a_chinese_browser(rich: tuple[Daemon, str]) -> None:
    d, base = rich
    b = Browser(lang="zh-CN")
    try:
        ready(b, base + "/")
        assert b.js("return document.documentElement.lang") == "zh-CN"
        assert b.js("return document.getElementById('send').innerText") == "发送"
        assert b.js("return document.getElementById('new').innerText") == "新对话"
        assert b.js("return document.getElementById('input').placeholder") == "输入问题…"
    finally:
        b.close()


def test_xss_answer_runs_nothing(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("panel-xss")
    d, base = start(tmp, write_script_model(tmp / "xss.gguf", XSS))
    try:
        ready(browser, base + "/")
        browser.js("window.__violations = []; document.addEventListener('securitypolicyviolation', "
                   "e => window.__violations.push([e.violatedDirective, e.sample, e.sourceFile, e.lineNumber, e.columnNumber]));")
        ask(browser, "Say something dangerous.")
        last = "document.querySelector('#log .exchange:last-child')"
        assert browser.js(f"return {last}.dataset.raw") == XSS.answer_text  # the model really sent it
        links = browser.driver.find_elements("css selector", "#log .markdown a")
        for link in links:
            link.click()
        browser.driver.find_element("css selector", "#log .markdown b").click()
        state = browser.js(f"""const m = {last}.querySelector('.markdown');
            return {{xss: window.__xss === undefined ? null : window.__xss, title: document.title,
                    handlers: [...m.querySelectorAll('*')].filter(e => [...e.attributes].some(a => a.name.startsWith('on'))).length,
                    bad: m.querySelectorAll('script, img, svg, iframe').length,
                    hrefs: [...m.querySelectorAll('a')].map(a => a.getAttribute('href')),
                    violations: window.__violations, text: m.innerText}}""")
        assert state["xss"] is None and state["title"] == "edgebot"
        assert state["handlers"] == 0 and state["bad"] == 0
        assert all(h is None or not h.lower().startswith("javascript") for h in state["hrefs"]), state["hrefs"]
        # Chromium reports the handlers it meets while DOMPurify parses the answer in its inert
        # document (nothing runs there); nothing that reached the page tried to run
        assert all(v[2].endswith("/vendor/purify.min.js") for v in state["violations"]), state["violations"]
        assert "bold" in state["text"] and "done." in state["text"]
        assert len(browser.driver.window_handles) == 1
    finally:
        d.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    """A board serving its LAN (host 0.0.0.0, so a token) on the endless model, for the token and Stop."""
    tmp = tmp_path_factory.mktemp("panel-lan")
    model = write_script_model(tmp / "loop.gguf", replace(DEFAULT_SCRIPT, loop=True), n_embd=512, n_layers=4,
                               n_ff=2048)
    d, base = start(tmp, model, f'host = "0.0.0.0"\ntoken = "{TOKEN}"\n[llm]\nn_ctx = 4096\nmax_tokens = 4000\n')
    yield d, base
    d.stop()


def test_token_prompt_beyond_loopback(browser: Browser, guarded: tuple[Daemon, str]) -> None:
    d, base = guarded
    browser.driver.get(base + "/")
    browser.wait(lambda: browser.js("return document.getElementById('token-dialog').open"), 20, "the token prompt")
    assert browser.js("return document.body.dataset.ready") is None
    field = browser.driver.find_element("id", "token")
    field.send_keys("wrong-token\n")
    browser.wait(lambda: browser.js("return document.getElementById('token-dialog').open && "
                                    "!document.getElementById('token-error').hidden"), 20, "the wrong-token message")
    browser.driver.find_element("id", "token").send_keys(TOKEN + "\n")
    browser.wait(lambda: browser.js("return document.body.dataset.ready === '1'"), 20, "the page after the token")
    assert browser.js("return localStorage.getItem('edgebot.token')") == TOKEN
    ready(browser, base + "/")  # asked once: a reload goes straight in
    assert not browser.js("return document.getElementById('token-dialog').open")


def test_stop_cancels_on_the_board(browser: Browser, guarded: tuple[Daemon, str]) -> None:
    d, base = guarded
    ready(browser, base + "/")
    before = int(browser.js("return Number(document.body.dataset.answers || 0)"))
    browser.driver.find_element("id", "input").send_keys("Count forever.\n")
    browser.wait(lambda: len(browser.js("return document.querySelector('#log .exchange:last-child .markdown')"
                                        ".innerText")) > 40, 30, "the endless answer to stream")
    browser.driver.find_element("id", "stop").click()
    browser.wait(lambda: int(browser.js("return Number(document.body.dataset.answers || 0)")) > before, 30,
                 "the answer to end")
    assert browser.js("return document.querySelector('#log .exchange:last-child').dataset.reason") == "cancelled"
    convs = api(base, "/panel/api/conversations", TOKEN)["conversations"]
    (conv,) = [c for c in convs if c["title"] == "Count forever."]
    (exchange,) = api(base, f"/panel/api/conversations/{conv['id']}", TOKEN)["exchanges"]
    assert exchange["reason"] == "cancelled"  # the engine's own end of the job
    bus = d.connect()
    assert bus.wait_idle(10)["queue"]["running"] is None  # the board stopped generating (an endless answer)
    bus.close()
    assert browser.js("return document.getElementById('send').hidden") is False


def test_thinking_line_counts_while_thinking_and_stays_closed(browser: Browser,
                                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("panel-think")
    # no closing tag and a looping tail: the model thinks until Stop (or max_tokens)
    endless = Script(think=("Hmm,", " let me", " think."), close=(), answer=(" More", " thoughts."), loop=True)
    model = write_script_model(tmp / "thinker.gguf", endless, n_embd=512, n_layers=4, n_ff=2048)
    d, base = start(tmp, model, "[llm]\nn_ctx = 4096\nmax_tokens = 4000\nthink_budget = { http = 4000 }\n")
    try:
        ready(browser, base + "/")
        before = int(browser.js("return Number(document.body.dataset.answers || 0)"))
        browser.driver.find_element("id", "input").send_keys("Think hard.\n")
        summary = "document.querySelector('#log .exchange:last-child summary')"
        text = browser.wait(lambda: browser.js(f"const s = {summary}; return s && /\\(([1-9]\\d*) s\\)/.test(s.innerText) "
                                               "&& s.innerText"), 30, "the thinking line to count a second")
        assert re.fullmatch(r"thinking… \(\d+ s\)", text), text
        assert browser.js("return document.querySelector('#log .exchange:last-child details').open") is False
        assert browser.js("return document.querySelector('#log .exchange:last-child .markdown').innerText") == ""
        browser.driver.find_element("id", "stop").click()
        browser.wait(lambda: int(browser.js("return Number(document.body.dataset.answers || 0)")) > before, 30,
                     "the answer to end")
        assert re.fullmatch(r"thought for \d+ s", browser.js(f"return {summary}.innerText"))
        assert browser.js("return document.querySelector('#log .exchange:last-child').dataset.reason") == "cancelled"
    finally:
        d.stop()
