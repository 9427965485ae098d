"""`snakemake --report` after a tiny run, opened in headless Chromium.

Chromium (Debian `chromium`) is started for a closed network (no background networking, no component updates,
no sync, a fresh profile) and driven through the DevTools protocol over a pipe (--remote-debugging-pipe: no port,
no extra Python package). The page must load with no console error, no uncaught exception and no request
beyond the file itself; every result category the run produced must be listed; for every category with a figure,
one figure opens with a non-zero size. Screenshots land in the test's tmp dir (printed with `-s`).

The expected categories come from the rules themselves: every output flagged `report()` (read through the
Snakemake API) whose file the run produced. New stages are checked as soon as they declare report outputs.
"""

import base64
import fcntl
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY, run_snakemake

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg")
# The flags of the issue for a closed network, plus a pipe for the DevTools protocol.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--window-size=1400,900",
    "--remote-debugging-pipe",
]

# Printed as JSON by a child Python: the rules' report() declarations as the workflow defines them.
DECLARED = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

snakefile, workdir, configfile = sys.argv[1:4]
with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(ResourceSettings(), ConfigSettings(configfiles=[Path(configfile)]),
                      snakefile=Path(snakefile), workdir=Path(workdir))
    out = []
    for rule in wf._workflow.rules:
        for f in rule.output:
            rep = f.flags.get("report")
            if rep:
                out.append({"rule": rule.name, "pattern": str(f), "category": rep.category,
                            "subcategory": rep.subcategory,
                            "caption": None if rep.caption is None else str(rep.caption)})
print("DECLARED " + json.dumps(out))
"""


def pattern_glob(pattern: str) -> str:
    """results/{dataset,regex}/x.png -> results/*/x.png (wildcards, constraints with braces included)."""
    out, depth = [], 0
    for ch in pattern:
        if ch == "{":
            if depth == 0:
                out.append("*")
            depth += 1
        elif ch == "}":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


@pytest.fixture(scope="module")
def tiny_report(tiny_run):
    """The tiny run's report (results/report.html) and the report outputs the rules declare."""
    work = tiny_run
    res = run_snakemake(work, "--report", "results/report.html", configfile=TINY, timeout=300)
    log = res.stdout + res.stderr
    assert res.returncode == 0 and "Report created" in log, log[-4000:]
    # docutils reports RST mistakes in captions or workflow.rst (e.g. an unescaped |F|) and carries on.
    problems = [line for line in log.splitlines() if re.search(r"\((INFO/1|WARNING/2|ERROR/3|SEVERE/4)\)", line)]
    assert not problems, "RST problems in captions or workflow.rst:\n" + "\n".join(problems)

    res = subprocess.run([sys.executable, "-c", DECLARED, str(ROOT / "Snakefile"), str(work), str(TINY)],
                         capture_output=True, text=True, timeout=120)
    lines = [line for line in res.stdout.splitlines() if line.startswith("DECLARED ")]
    assert res.returncode == 0 and lines, (res.stdout + res.stderr)[-4000:]
    declared = json.loads(lines[-1].removeprefix("DECLARED "))
    for d in declared:
        d["files"] = sorted(str(p.relative_to(work)) for p in work.glob(pattern_glob(d["pattern"])))
    return work, work / "results/report.html", declared


def test_every_report_output_has_a_caption_and_a_category(tiny_report):
    _, _, declared = tiny_report
    assert declared, "no rule declares a report() output"
    for d in declared:
        assert d["category"], f"rule {d['rule']}: report({d['pattern']!r}) has no category"
        assert d["caption"] and Path(d["caption"]).is_file(), f"rule {d['rule']}: report({d['pattern']!r}) caption"
        assert Path(d["caption"]).resolve().parent == ROOT / "workflow/report", d["caption"]


def test_the_report_is_one_self_contained_file(tiny_report):
    _, html, declared = tiny_report
    text = html.read_text(encoding="utf-8")
    # No script, stylesheet or image is fetched from elsewhere: everything is inline or a data: URI.
    assert not re.search(r"<(script|img|iframe)\b[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", text, re.I)
    assert not re.search(r"<link\b[^>]*\bhref\s*=\s*[\"']?(https?:)?//", text, re.I)
    assert "turns crystal structures into serial-crystallography" in text, "workflow/report/workflow.rst is missing"


class DevTools:
    """Chromium driven through the DevTools protocol on fds 3 (commands in) and 4 (replies and events out)."""

    def __init__(self, user_data_dir: Path, stderr_path: Path, timeout_s: float = 30.0):
        self.timeout_s = timeout_s
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def move_pipes_to_3_and_4():  # runs in the child between fork and exec
            r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr,
            preexec_fn=move_pipes_to_3_and_4, close_fds=False, start_new_session=True,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._stderr_path = stderr_path
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._inbox: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        buf = b""
        try:
            while chunk := os.read(self._from_browser, 1 << 16):
                buf += chunk
                *messages, buf = buf.split(b"\0")
                for m in messages:
                    self._inbox.put(json.loads(m))
        except OSError:
            pass
        finally:
            self._inbox.put(None)

    def _pump(self, deadline: float) -> None:
        try:
            msg = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return
        if msg is None:
            self._inbox.put(None)  # stays closed for later calls
            tail = self._stderr_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"Chromium closed the DevTools pipe (exit status {self.proc.poll()}); its log:\n{tail}")
        if "id" in msg:
            self._replies[msg["id"]] = msg
        else:
            self.events.append(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        msg_id = self._next_id
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while msg_id not in self._replies:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply to {method} within {self.timeout_s} s")
            self._pump(deadline)
        reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait_for(self, what: str, predicate, timeout_s: float | None = None):
        """Pump events until predicate() is truthy; returns its value."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while not (value := predicate()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            self._pump(min(deadline, time.monotonic() + 0.1))
        return value

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close")
                except (RuntimeError, TimeoutError, OSError):
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            # The browser and its helpers (renderer, zygote, ...) form their own process group.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
            self._reader.join(timeout=5)
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._stderr.close()


class ReportPage:
    """The report open in one tab, with its console, exceptions and network requests recorded."""

    def __init__(self, browser: DevTools, url: str):
        self.browser, self.url = browser, url
        targets = browser.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        attached = browser.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.cmd(f"{domain}.enable")

    def cmd(self, method: str, params: dict | None = None) -> dict:
        return self.browser.send(method, params, session=self.session)

    def js(self, expression: str):
        res = self.cmd("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression!r}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def events(self, method: str) -> list[dict]:
        return [e["params"] for e in self.browser.events
                if e["method"] == method and e.get("sessionId") == self.session]

    def load(self) -> None:
        """(Re)load the report and wait until the React app has drawn its menu."""
        seen = len(self.events("Page.loadEventFired"))
        self.cmd("Page.navigate", {"url": self.url})
        self.browser.wait_for("the load event", lambda: len(self.events("Page.loadEventFired")) > seen)
        self.browser.wait_for("the report's menu", lambda: self.js(
            "getComputedStyle(document.querySelector('#loading-screen')).display === 'none'"
            " && document.querySelectorAll('nav a').length > 0"))

    def menu_labels(self) -> list[str]:
        return self.js("Array.from(document.querySelectorAll('nav li a')).map(a => a.textContent.trim())")

    def click_menu(self, label: str) -> None:
        clicked = self.js(f"""(() => {{
            const a = Array.from(document.querySelectorAll('nav li a'))
                .find(a => a.textContent.trim() === {json.dumps(label)});
            if (a) a.click();
            return !!a;
        }})()""")
        assert clicked, f"no menu entry {label!r} in {self.menu_labels()}"

    def result_rows(self) -> int:
        return self.browser.wait_for("the results table", lambda: self.js(
            "document.querySelectorAll('nav table tbody tr').length"))

    def open_first_figure(self) -> dict | None:
        """Click the view button of each result row until one opens an image; its size once loaded."""
        rows = self.result_rows()
        for i in range(rows):
            # The first button of a row views the result; for a table it is a download link instead (skipped).
            button = f"document.querySelectorAll('nav table tbody tr')[{i}].querySelector('a[type=button]')"
            if self.js(f"{button}.getAttribute('href')") != "#":
                continue
            self.js(f"{button}.click()")
            if self.js("app.state.content") != "img":
                continue
            return self.browser.wait_for("the figure to load", lambda: self.js("""(() => {
                const img = Array.from(document.images).find(i => i.getAttribute('src') === app.state.contentPath);
                if (!img || !img.complete || img.naturalWidth === 0) return null;
                const box = img.getBoundingClientRect();
                return {path: app.state.resultPath, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
                        width: box.width, height: box.height};
            })()"""))
        return None

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.cmd("Page.captureScreenshot", {"format": "png"})["data"]))
        return path

    def problems(self) -> list[str]:
        """Console errors and assertions, uncaught exceptions, browser log errors, requests beyond the file."""
        out = []
        for p in self.events("Runtime.consoleAPICalled"):
            if p["type"] in ("error", "assert"):
                out.append("console." + p["type"] + ": " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in p["args"]))
        for p in self.events("Runtime.exceptionThrown"):
            d = p["exceptionDetails"]
            out.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
        for p in self.events("Log.entryAdded"):
            if p["entry"]["level"] == "error":
                out.append(f"log ({p['entry']['source']}): {p['entry']['text']} {p['entry'].get('url', '')}")
        for p in self.events("Network.requestWillBeSent"):
            url = p["request"]["url"]
            if not url.startswith(("data:", "blob:", "about:")) and url != self.url:
                out.append(f"request beyond the report file: {url}")
        for p in self.events("Network.loadingFailed"):
            out.append(f"failed request: {p.get('errorText')} ({p.get('type')})")
        return list(dict.fromkeys(out))  # each once, in order (the page is loaded once per category)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package `chromium`; `make test` "
                                              "installs it where apt and root are available)")
def test_report_renders_in_headless_chromium(tiny_report, tmp_path):
    work, html, declared = tiny_report
    produced = [d for d in declared if d["files"]]
    # Snakemake files a result without a category under "Other" (the first test fails on it anyway).
    expected = sorted({d["category"] or "Other" for d in produced})
    with_figures = sorted({d["category"] or "Other" for d in produced if d["pattern"].lower().endswith(IMAGE_SUFFIXES)})
    assert expected and with_figures, f"the tiny run produced no report output: {declared}"

    browser = DevTools(tmp_path / "profile", tmp_path / "chromium.log")
    try:
        page = ReportPage(browser, html.as_uri())
        page.load()
        landing = page.screenshot(tmp_path / "report_landing.png")
        assert not page.problems(), "\n".join(page.problems())
        # The landing page is the workflow description (workflow.rst) beside the rule graph. Snakemake centres it
        # vertically, so a description taller than the window loses its top (out of reach of the scroll bar).
        description = page.js("""(() => {
            const d = document.querySelector('div.prose');
            const box = d && d.getBoundingClientRect();
            return d && {text: d.innerText, top: box.top, height: box.height};
        })()""")
        assert description and "turns crystal structures" in description["text"], description
        assert "Parameters of this run" in description["text"], description["text"]
        assert description["top"] >= 0, f"the top of workflow.rst is cut off (out of the window): {description}"
        menu = page.menu_labels()
        for label in ("Workflow", "Statistics", "About"):
            assert label in menu, menu
        # One category is shown as a plain "Results" entry; several as a "Results" list of their names.
        for category in expected:
            assert (category in menu) if len(expected) > 1 else ("Results" in menu), (category, menu)
        # Every report file the run produced is among the report's results.
        in_report = set(page.js("Object.keys(results)"))
        missing = [f for d in produced for f in d["files"] if f not in in_report]
        assert not missing, f"produced but not in the report: {missing}"

        figures = {}
        for category in expected:
            page.load()
            page.click_menu(category if len(expected) > 1 else "Results")
            if page.js("app.state.navbarMode") == "category":  # several subcategories: open the first
                page.click_menu(sorted(page.js(f"Object.keys(categories[{json.dumps(category)}])"))[0])
            assert page.js("app.state.category") == category
            assert page.result_rows() >= 1, f"category {category!r} lists no result"
            if category in with_figures:
                figure = page.open_first_figure()
                assert figure is not None, f"no figure of category {category!r} opens"
                assert figure["naturalWidth"] > 0 and figure["naturalHeight"] > 0, figure
                assert figure["width"] > 0 and figure["height"] > 0, figure
                figures[category] = figure
                shot = page.screenshot(tmp_path / f"report_{re.sub(r'[^A-Za-z0-9]+', '_', category)}.png")
                assert shot.stat().st_size > 10_000
        print(f"\nreport screenshots: {landing.parent}; figures: {figures}")
        problems = page.problems()
        assert not problems, "\n".join(problems)
    finally:
        browser.close()
