"""Headless Chromium for the governance service's page (Debian's ``chromium`` and
``chromium-driver``, driven by selenium; ``make setup`` installs them).

``open_chromium()``: a selenium driver (``--no-sandbox`` as root: Chromium refuses root with its
sandbox; never a driver downloaded: ``SE_OFFLINE``). Run as a script, ``page_browser.py URL
DISPUTE_ID [TIMEOUT_S]`` opens the page at URL where it is reachable (the lab runs it inside its
management namespace, where the service listens), waits until dispute DISPUTE_ID shows its
report, and prints what the page shows as JSON (exit 1 with the reason when it does not)."""
import json
import os
import shutil
import sys
import time

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = ("chromium and chromium-driver are not installed (make setup installs them: "
           "scripts/bootstrap-system)")


def open_chromium():
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,2000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    if os.geteuid() == 0:
        opts.add_argument("--no-sandbox")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=DriverService(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    return driver


def report_shown(driver, dispute_id):
    """True once the dispute's card holds its report with the SVG image loaded."""
    return driver.execute_script("""
        const c = document.querySelector(`.dispute[data-dispute="${arguments[0]}"]`);
        const img = c && c.querySelector('.report img.report-svg');
        return !!(img && img.complete && img.naturalWidth > 0);""", dispute_id)


def what_it_shows(driver, dispute_id):
    return driver.execute_script("""
        const id = arguments[0];
        const card = document.querySelector(`.dispute[data-dispute="${id}"]`);
        const q = (root, sel) => [...(root || document).querySelectorAll(sel)];
        return {
          title: document.title,
          status: document.getElementById('status').textContent,
          slas: q(document, '.sla').map(s => Number(s.dataset.sla)),
          loss_points: Object.fromEntries(q(document, '.sla').map(s => [s.dataset.sla,
            q(s, 'svg.plot-loss circle.point').map(c => c.getAttribute('class'))])),
          routers: q(document, '#routers tbody tr').map(tr => tr.children[1].textContent),
          steps: q(card, '.steps span.done').map(s => s.textContent),
          decision: card && card.querySelector('.decision') ?
            card.querySelector('.decision').textContent : null,
          verdicts: Object.fromEntries(q(card, '.report table.devices tbody tr').map(
            tr => [tr.children[0].textContent, tr.children[3].textContent])),
          hops: q(card, '.report table.hops tbody tr').map(tr => tr.children[0].textContent),
          evidence_digest: card && card.querySelector('.report .evidence-digest') ?
            card.querySelector('.report .evidence-digest').textContent : null,
        };""", dispute_id)


def main(argv):
    url, did = argv[0], int(argv[1])
    timeout = float(argv[2]) if len(argv) > 2 else 60
    if not (CHROMIUM and CHROMEDRIVER):
        print(MISSING, file=sys.stderr)
        return 1
    driver = open_chromium()
    try:
        driver.get(url)
        end = time.monotonic() + timeout
        while not report_shown(driver, did):
            if time.monotonic() > end:
                print(f"{url}: dispute {did}'s report not shown within {timeout:g} s",
                      file=sys.stderr)
                return 1
            time.sleep(0.3)
        out = what_it_shows(driver, did)
        out["console_errors"] = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        print(json.dumps(out))
        return 0
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
