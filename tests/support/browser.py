"""A real browser for the console's tests: Debian's chromium, headless, driven by selenium
through Debian's chromedriver (both installed by scripts/setup.sh --for-tests; nothing is
downloaded). Each test's screenshots go to KEYTURN_TEST_ARTIFACTS (default
test-artifacts/console/, gitignored), one folder per test.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS_ENV = "KEYTURN_TEST_ARTIFACTS"
ROOT = Path(__file__).resolve().parents[2]


def artifacts_root() -> Path:
    return Path(os.environ.get(ARTIFACTS_ENV) or ROOT / "test-artifacts" / "console")


@contextmanager
def chromium() -> Iterator[WebDriver]:
    """A headless chromium of its own (its own profile: no cookie is shared with another)."""
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root in CI's container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1100",
        "--no-first-run",
        "--disable-extensions",
        "--password-store=basic",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Browser:
    """The driver on one server's console, saving numbered screenshots for one test."""

    def __init__(self, driver: WebDriver, base_url: str, test_name: str) -> None:
        self.driver = driver
        self.base_url = base_url
        self.folder = artifacts_root() / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in [*self.folder.glob("*.png"), *self.folder.glob("*.html")]:
            old.unlink()
        self._shots = 0
        driver.delete_all_cookies()

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def shot(self, name: str) -> Path:
        self._shots += 1
        path = self.folder / f"{self._shots:02d}-{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        return path

    def keep_failure(self) -> None:
        """The page as it stood when a step failed: a screenshot and its HTML."""
        self.shot("failure")
        (self.folder / "failure.html").write_text(self.driver.page_source, encoding="utf-8")

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return self.find(css).text

    def submit(self, button_css: str) -> None:
        """Click a form's button and wait for the page it leads to."""
        self.click(self.find(button_css))

    def click(self, element: WebElement) -> None:
        """Click a link or button and wait until the page it leads to has loaded: the old
        page's root is gone and the new document is complete. Errors of a page caught
        between the two are asked again (chromedriver reports the old root's node as "not
        in the document" rather than stale while the new page commits)."""
        old = self.find("html")
        element.click()

        def loaded(driver: WebDriver) -> bool:
            return _gone(old) and driver.execute_script("return document.readyState") == "complete"

        WebDriverWait(self.driver, 30, ignored_exceptions=(WebDriverException,)).until(loaded)

    def sign_in(self, secret: str) -> None:
        self.open("/console/")
        self.find("#token").send_keys(secret)
        self.submit("#sign-in")

    def search(self, by: str, text: str) -> None:
        self.find(f"#by option[value='{by}']").click()
        self.find("#q").send_keys(text)
        self.submit("#search")

    def cookie(self) -> dict[str, str]:
        return {c["name"]: c["value"] for c in self.driver.get_cookies()}

    def title(self) -> str:
        return self.driver.title


def _gone(element: WebElement) -> bool:
    """Whether `element`'s page has been replaced."""
    try:
        element.tag_name  # noqa: B018 (asks the browser)
    except StaleElementReferenceException:
        return True
    except WebDriverException as error:
        if "does not belong to the document" in str(error.msg):
            return True
        raise
    return False
