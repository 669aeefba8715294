"""Headless Chromium through OHIF: does each SR and SEG of a study display? (stdlib + selenium only)

Run with a Python that has selenium (the OHIF harness venv, /tmp/ohif/venv), Debian's chromium and
chromedriver::

    python tests/ohif/driver.py --site URL --out DIR STUDY_UID...

It opens ``/viewer?StudyInstanceUIDs=…`` and asks OHIF's own services what it made of the study
(``displaySetService``), then, for every SEG, loads it into the viewport, accepts OHIF's prompt to open
it, waits for its segments in ``segmentationService`` and counts the canvas pixels that change when the
segments are hidden (nothing drawn: 0); for every SR, loads it (declining hydration) and counts the
annotations OHIF drew over the image. A screenshot per step. Chromium may reach loopback only (a dead
proxy for anything else and no DNS), and every URL it asked for is reported. Writes ``report.json``
into ``--out``; exit status 0 when every SR and SEG displayed, 1 when one did not, 2 when OHIF did not
load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not go online
os.environ.setdefault("SE_AVOID_STATS", "true")
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

CHROMIUM = os.environ.get("OHIF_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("OHIF_CHROMEDRIVER", "/usr/bin/chromedriver")
SIZE = (1400, 900)
ANNOTATIONS = ".viewport-element svg [data-annotation-uid]"


class Viewer:
    def __init__(self, site: str, profile: str) -> None:
        self.site = site.rstrip("/")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-unsafe-swiftshader",  # WebGL2 in software
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            f"--window-size={SIZE[0]},{SIZE[1]}",
            "--proxy-server=http://127.0.0.1:9",
            "--proxy-bypass-list=127.0.0.1",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        ):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_script_timeout(60)
        self.urls: set[str] = set()
        self.console: list[str] = []

    def js(self, script: str, *args: object) -> object:
        return self.driver.execute_script(script, *args)

    def wait(self, script: str, timeout: float, *args: object) -> object:
        end = time.monotonic() + timeout
        value: object = None
        while time.monotonic() < end:
            try:
                value = self.js(script, *args)
            except WebDriverException as error:
                if "javascript error" not in str(error).lower():
                    raise
                value = None
            if value:
                return value
            time.sleep(0.5)
        return value

    def collect(self) -> None:
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                self.urls.add(message["params"]["request"]["url"].split("?")[0])
        for entry in self.driver.get_log("browser"):
            if entry["level"] == "SEVERE":
                self.console.append(entry["message"][:300])

    def shot(self, path: str) -> str:
        self.driver.save_screenshot(path)
        return os.path.basename(path)

    def open(self, study: str) -> bool:
        self.driver.get(f"{self.site}/viewer?StudyInstanceUIDs={study}")
        loaded = self.wait(
            "return !!(window.services && window.services.displaySetService"
            " && window.services.displaySetService.getActiveDisplaySets().length)",
            90,
        )
        if loaded:
            self.wait("return !!document.querySelector('.cornerstone-canvas')", 60)
            time.sleep(2)
        return bool(loaded)

    def display_sets(self) -> list[dict[str, object]]:
        return self.js(  # type: ignore[return-value]
            """return window.services.displaySetService.getActiveDisplaySets().map(d => ({
                uid: d.displaySetInstanceUID, modality: d.Modality, series: d.SeriesInstanceUID,
                images: d.numImageFrames || (d.images ? d.images.length : 0),
                unsupported: !!d.unsupported, referenced: d.referencedDisplaySetInstanceUID || null}))"""
        )

    def current(self, series: str, modality: str) -> str | None:
        return self.js(  # type: ignore[return-value]
            """const d = window.services.displaySetService.getActiveDisplaySets()
                 .find(x => x.SeriesInstanceUID === arguments[0] && x.Modality === arguments[1]);
               return d ? d.displaySetInstanceUID : null""",
            series,
            modality,
        )

    def load(self, uid: str) -> bool:
        thumbnail = self.driver.find_element(By.ID, "thumbnail-" + uid)
        self.js("arguments[0].scrollIntoView({block: 'center'})", thumbnail)
        ActionChains(self.driver).double_click(thumbnail).perform()
        return bool(
            self.wait(
                """return [...window.services.viewportGridService.getState().viewports.values()]
                     .some(v => (v.displaySetInstanceUIDs || []).includes(arguments[0]))""",
                30,
                uid,
            )
        )

    def click(self, cy: str, timeout: float) -> bool:
        if not self.wait(f"return !!document.querySelector('[data-cy=\"{cy}\"]')", timeout):
            return False
        self.driver.find_element(By.CSS_SELECTOR, f'[data-cy="{cy}"]').click()
        return True

    def open_segmentation_panel(self) -> str | None:
        """Open the right-hand segmentation panel (its button's data-cy differs between modes)."""
        present: list[str] = self.js(  # type: ignore[assignment]
            "return [...document.querySelectorAll('[data-cy$=\"-btn\"]')].map(e => e.getAttribute('data-cy'))"
        )
        for cy in [c for c in present if "egmentation" in c]:
            self.driver.find_element(By.CSS_SELECTOR, f'[data-cy="{cy}"]').click()
            time.sleep(1.5)
            return cy
        return None

    def snapshot(self) -> int:
        return self.js(  # type: ignore[return-value]
            """window.__before = [...document.querySelectorAll('canvas.cornerstone-canvas')].map(c => {
                 const g = c.getContext('2d', {willReadFrequently: true});
                 return g ? g.getImageData(0, 0, c.width, c.height).data : null; });
               return window.__before.filter(Boolean).length"""
        )

    def changed_pixels(self) -> int:
        return self.js(  # type: ignore[return-value]
            """let n = 0;
               [...document.querySelectorAll('canvas.cornerstone-canvas')].forEach((c, k) => {
                 const a = (window.__before || [])[k]; if (!a) return;
                 const g = c.getContext('2d', {willReadFrequently: true});
                 const b = g.getImageData(0, 0, c.width, c.height).data;
                 for (let i = 0; i < Math.min(a.length, b.length); i += 4) {
                   const d = Math.abs(a[i] - b[i]) + Math.abs(a[i + 1] - b[i + 1])
                     + Math.abs(a[i + 2] - b[i + 2]);
                   if (d > 30) n++;
                 }
               });
               return n"""
        )


def check_seg(viewer: Viewer, series: str, shot: str) -> dict[str, object]:
    uid = viewer.current(series, "SEG")
    result: dict[str, object] = {"series": series, "modality": "SEG"}
    if uid is None:
        return {**result, "status": "NOT_DISPLAYED: no display set"}
    result["loaded"] = viewer.load(uid)
    result["prompt_accepted"] = viewer.click("yes-hydrate-btn", 25)
    segments = viewer.wait(
        """const all = window.services.segmentationService.getSegmentations();
           const s = all.find(x => x.segmentationId === arguments[0]) || all[0];
           return s ? Object.values(s.segments || {}).filter(Boolean).map(x => x.label) : null""",
        60,
        uid,
    )
    result["segments"] = segments or []
    time.sleep(2)
    result["screenshot"] = viewer.shot(shot)
    result["panel"] = viewer.open_segmentation_panel()
    viewer.wait("return document.querySelectorAll('[data-cy=\"data-row\"]').length", 10)
    toggle = next(
        (
            cy
            for cy in ("all-segments-visibility-toggle", "data-row-visibility-toggle")
            if viewer.js("return !!document.querySelector(arguments[0])", f'[data-cy="{cy}"]')
        ),
        None,
    )
    result["overlay_pixels"] = None
    if toggle and viewer.snapshot() and viewer.click(toggle, 3):
        time.sleep(2)
        result["overlay_pixels"] = viewer.changed_pixels()
        viewer.click(toggle, 3)
    if not segments:
        result["status"] = "NOT_DISPLAYED: OHIF loaded no segment"
    elif result["overlay_pixels"] is None:
        result["status"] = "NOT_CHECKED: no segment visibility toggle found"
    elif result["overlay_pixels"] == 0:
        result["status"] = "NOT_DISPLAYED: hiding the segments changes no pixel"
    else:
        result["status"] = "DISPLAYED"
    return result


def check_sr(viewer: Viewer, series: str, shot: str) -> dict[str, object]:
    uid = viewer.current(series, "SR")
    result: dict[str, object] = {"series": series, "modality": "SR"}
    if uid is None:
        return {**result, "status": "NOT_DISPLAYED: no display set"}
    result["loaded"] = viewer.load(uid)
    viewer.wait(
        "const d = window.services.displaySetService.getDisplaySetByUID(arguments[0]);"
        " return d && d.isLoaded",
        30,
        uid,
    )
    viewer.click("no-hydrate-btn", 5)  # read-only display is what is checked
    drawn = viewer.wait(f"return document.querySelectorAll('{ANNOTATIONS}').length", 10)
    if not drawn:  # OHIF may add the SR's annotations after its last render: render once more
        viewer.js("window.cornerstone && window.cornerstone.getRenderingEngines().forEach(e => e.render())")
        drawn = viewer.wait(f"return document.querySelectorAll('{ANNOTATIONS}').length", 8)
    result["annotations"] = int(drawn or 0)
    result["screenshot"] = viewer.shot(shot)
    result["status"] = "DISPLAYED" if drawn else "NOT_DISPLAYED: no annotation drawn"
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--site", required=True, help="the OHIF site, http://127.0.0.1:PORT")
    parser.add_argument("--out", required=True)
    parser.add_argument("--allow", action="append", default=[], help="another loopback URL prefix")
    parser.add_argument("studies", nargs="+")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="ohif-node-chromium-")
    viewer = Viewer(args.site, profile)
    report: dict[str, object] = {"site": args.site, "studies": []}
    status = 0
    try:
        viewer.driver.get(args.site + "/manifest.json")
        viewer.js("localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))")
        for number, study in enumerate(args.studies, start=1):
            entry: dict[str, object] = {"study": study, "objects": []}
            report["studies"].append(entry)  # type: ignore[attr-defined]
            if not viewer.open(study):
                entry["status"] = "VIEWER_DID_NOT_LOAD"
                entry["screenshot"] = viewer.shot(os.path.join(args.out, f"{number:02d}_viewer.png"))
                status = 2
                continue
            entry["display_sets"] = sets = viewer.display_sets()
            entry["screenshot"] = viewer.shot(os.path.join(args.out, f"{number:02d}_viewer.png"))
            objects = [s for s in sets if s["modality"] in ("SR", "SEG")]
            for index, found in enumerate(objects, start=1):
                if index > 1:
                    viewer.open(study)  # each object on a freshly opened viewer
                shot = os.path.join(args.out, f"{number:02d}_{index}_{found['modality']}.png")
                check = check_seg if found["modality"] == "SEG" else check_sr
                try:
                    outcome = check(viewer, str(found["series"]), shot)
                except WebDriverException as error:
                    outcome = {**found, "status": f"CHECK_ERROR: {error.msg}"}
                entry["objects"].append(outcome)  # type: ignore[attr-defined]
                if outcome["status"] != "DISPLAYED":
                    status = max(status, 1)
        viewer.collect()
    finally:
        try:
            viewer.driver.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)
    allowed = (args.site, *args.allow, "data:", "blob:", "chrome", "devtools")
    report["offsite_requests"] = sorted(u for u in viewer.urls if not u.startswith(allowed))
    report["requests"] = len(viewer.urls)
    report["console_errors"] = viewer.console[:50]
    if report["offsite_requests"]:
        status = max(status, 1)
    report["exit_status"] = status
    with open(os.path.join(args.out, "report.json"), "w") as handle:
        json.dump(report, handle, indent=1, default=str)
    print(json.dumps(report, indent=1, default=str)[:6000])
    return status


if __name__ == "__main__":
    sys.exit(main())
