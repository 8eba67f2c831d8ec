"""Screenshot of the ``binser serve`` page after uploading one file (how docs/serve-page.png
is made).

    .venv/bin/python scripts/serve_screenshot.py MODEL FILE OUT.png [--port 8765]

Starts ``binser serve MODEL`` on 127.0.0.1:PORT, opens the page in headless Chromium
(``/usr/bin/chromium`` driven by playwright, the test extra), uploads FILE, waits until the
timeline is drawn and the label shown, saves a 1000 x 900 px screenshot to OUT.png (written
to a temporary file and renamed) and stops the server. Prints the label the page shows.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def wait_for_server(url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Poll ``url`` until it answers 200; stop with the server's exit code if it dies."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"binser serve exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"binser serve did not answer {url} within {timeout_s:.0f} s")


def screenshot(url: str, audio: Path, out: Path) -> str:
    """Upload ``audio`` on the page at ``url``, save the screenshot, return the label."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.goto(url, timeout=30_000)
        expect(page.locator("#model")).to_contain_text("views", timeout=30_000)
        page.set_input_files("#file", str(audio))
        expect(page.locator("#label")).not_to_be_empty(timeout=300_000)
        label = page.text_content("#label") or ""
        tmp = out.with_name(f".{out.name}.tmp.png")
        page.screenshot(path=str(tmp))
        browser.close()
    os.replace(tmp, out)
    return label


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="model folder written by 'binser train'")
    ap.add_argument("file", type=Path, help="audio file to upload")
    ap.add_argument("out", type=Path, help="PNG to write")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} not found (apt-get install chromium)")
    binser = Path(sys.executable).with_name("binser")
    proc = subprocess.Popen([str(binser), "serve", args.model, "--port", str(args.port)])
    try:
        base = f"http://127.0.0.1:{args.port}/"
        wait_for_server(base + "health", proc)
        print(screenshot(base, args.file, args.out))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
