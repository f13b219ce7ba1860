"""A real headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by selenium, for the
panel tests and bench. Nothing is downloaded: the system browser and driver are used, or the
caller skips (under CI=true: fails) with how to install them."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any, Callable, Optional

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--force-color-profile=srgb")
INSTALL = "apt-get install chromium chromium-driver (and pip install selenium: the dev extra)"


def missing() -> Optional[str]:
    """Why a browser cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium is not installed; {INSTALL}"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing; {INSTALL}"
    return None


class Browser:
    """One Chromium: ``lang`` (e.g. "zh-CN") sets the browser's language, ``size`` its window (pixels).

    ``color_scheme`` is "light" or "dark" (what the page sees as prefers-color-scheme).
    """

    def __init__(self, lang: str = "en-US", size: tuple[int, int] = (1100, 800), color_scheme: str = "light") -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="edgebot-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for flag in FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={self.profile}")
        opts.add_argument(f"--lang={lang}")
        opts.add_argument(f"--window-size={size[0]},{size[1]}")
        opts.add_experimental_option("prefs", {"intl.accept_languages": lang})
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        self.driver.set_script_timeout(30)
        self.viewport(*size)
        self.driver.execute_cdp_cmd("Emulation.setEmulatedMedia",
                                    {"features": [{"name": "prefers-color-scheme", "value": color_scheme}]})

    def viewport(self, width: int, height: int) -> None:
        """The page's viewport in CSS pixels, exactly (the window's chrome does not count)."""
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, what: Callable[[], Any], timeout: float = 30.0, message: str = "") -> Any:
        """Poll ``what()`` (every 50 ms) until it is truthy; its value, or AssertionError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            value = what()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {message or what}")
            time.sleep(0.05)

    def console(self) -> list[dict[str, Any]]:
        """Browser console entries since the last call."""
        return list(self.driver.get_log("browser"))

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
