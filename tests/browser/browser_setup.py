"""Where the browser tier finds its browser, and why it skips when there is none (no browser is ever downloaded)."""

from __future__ import annotations

import importlib.util
import os
import shutil

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """$CHROMIUM, the distribution's Chromium, or one on PATH."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium")


def browser_skip_reason() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "browser tier skipped: the Python package 'playwright' is not installed (pip install playwright)"
    if chromium_path() is None:
        return ("browser tier skipped: no Chromium binary (apt-get install chromium, or set CHROMIUM=/path/to/it); "
                "Playwright's own browser downloads are not used")
    return None
