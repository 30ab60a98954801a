"""Headless Chromium for the browser tests, and the parts of Airflow 3's UI they touch.

Every selector lives here. Airflow's React UI (Chakra) puts `data-testid` on its main
controls and `aria-label` on the navigation; a DAG param's input is found by its label,
anything else by its visible text. Waits are explicit
(WebDriverWait): no fixed sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1400,1000",
    "--lang=en-US",
)
UI_SECONDS = 30

OPEN_DIALOG = "[role='dialog'][aria-modal='true'][data-state='open']"
OPEN_POPOVER = "[data-scope='popover'][data-part='content'][data-state='open']"
DATETIME_FIELD = "[data-testid='datetime-input']"

T = TypeVar("T")


def missing_browser() -> str | None:
    """Why Chromium cannot be driven here, or None when it can."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if not missing:
        return None
    return (
        f"{' and '.join(missing)} missing: the browser tests need Debian's chromium and "
        "chromium-driver packages (make browser, or apt-get install chromium chromium-driver)"
    )


def start_chromium(profile: Path) -> webdriver.Chrome:
    """Headless Chromium with a fresh user-data dir at `profile`."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def poll(check: Callable[[], T | None], seconds: float, what: Callable[[], str]) -> T:
    """`check()` until it returns something truthy; AssertionError with `what()` after
    `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"after {seconds:.0f}s: {what()}"
        time.sleep(1)


class AirflowUI:
    """One browser on one Airflow UI; screenshots go to `shots` as `<test>--<step>.png`."""

    def __init__(self, driver: webdriver.Chrome, base: str, shots: Path) -> None:
        self.driver = driver
        self.base = base
        self.shots = shots
        self.test = "browser"

    def wait(self, seconds: float = UI_SECONDS) -> WebDriverWait:
        return WebDriverWait(
            self.driver, seconds, ignored_exceptions=(StaleElementReferenceException,)
        )

    def shot(self, step: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{self.test}--{step}.png"
        self.driver.save_screenshot(str(path))
        return path

    def open(self, path: str) -> None:
        self.driver.get(f"{self.base}{path}")

    # signing in

    def token(self) -> str | None:
        """The session's JWT (the `_token` cookie the UI and its plugins share)."""
        cookie = self.driver.get_cookie("_token")
        return None if cookie is None else cookie["value"]

    def sign_in(self, username: str, password: str) -> None:
        """Through the simple auth manager's form; back on the UI afterwards."""
        if "/auth/login" not in self.driver.current_url:
            self.open("/auth/login")
        form = self.wait().until(ec.visibility_of_element_located((By.NAME, "username")))
        form.send_keys(username)
        self.driver.find_element(By.NAME, "password").send_keys(password)
        self.wait().until(ec.element_to_be_clickable((By.XPATH, "//button[@type='submit']")))
        self.shot("sign-in-form")
        self.driver.find_element(By.XPATH, "//button[@type='submit']").click()
        self.wait().until(lambda d: "/auth/login" not in d.current_url and self.token())

    def ensure_signed_in(self, username: str, password: str) -> None:
        if self.token() is None:
            self.sign_in(username, password)

    # pages

    def dag_ids_listed(self) -> set[str]:
        return {
            link.text.strip()
            for link in self.driver.find_elements(By.CSS_SELECTOR, "a[data-testid='dag-id']")
        }

    def nav_link(self, label: str) -> WebElement:
        return self.wait().until(
            ec.element_to_be_clickable((By.CSS_SELECTOR, f"a[aria-label='{label}']"))
        )

    def open_trigger_dialog(self, dag_id: str) -> WebElement:
        """The DAG's page, its Trigger button, and the dialog that opens."""
        self.open(f"/dags/{dag_id}")
        self.wait().until(
            ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid='trigger-dag-button']"))
        ).click()
        dialog = self.wait().until(ec.visibility_of_element_located((By.CSS_SELECTOR, OPEN_DIALOG)))
        self.wait().until(lambda _: dag_id in dialog.find_element(By.TAG_NAME, "h2").text)
        return dialog

    def choose(self, dialog: WebElement, option: str) -> None:
        """A radio card of the dialog by its title ("Single Run", "Backfill", ...)."""
        card = f".//label[.//span[normalize-space()='{option}']]"
        self.wait().until(lambda _: dialog.find_element(By.XPATH, card).is_displayed())
        dialog.find_element(By.XPATH, card).click()
        self.wait().until(
            lambda _: dialog.find_element(By.XPATH, card).get_attribute("data-state") == "checked"
        )

    def set_datetime(self, dialog: WebElement, index: int, when: datetime) -> None:
        """The `index`-th date-time field of the dialog, typed into its picker (UTC)."""
        field = dialog.find_elements(By.CSS_SELECTOR, DATETIME_FIELD)[index]
        field.click()
        picker = self.wait().until(
            ec.visibility_of_element_located((By.CSS_SELECTOR, OPEN_POPOVER))
        )
        # the date first: choosing a date resets the time to the start (or end) of the day
        day = picker.find_element(By.CSS_SELECTOR, "input[placeholder='YYYY/MM/DD']")
        replace_text(day, f"{when:%Y/%m/%d}")
        clock = picker.find_element(By.CSS_SELECTOR, "input[placeholder='HH:mm']")
        replace_text(clock, f"{when:%H:%M}")
        clock.send_keys(Keys.ENTER)
        shown = f"{when:%b %d, %Y %H:%M}"  # Airflow pads the day: "Dec 01, 2026 18:00"
        try:
            self.wait().until(lambda _: field.text.strip() == shown)
        except TimeoutException as timeout:
            self.shot("datetime")
            raise AssertionError(
                f"the date field shows {field.text.strip()!r}, not {shown!r}"
            ) from timeout
        dialog.find_element(By.TAG_NAME, "h2").click()  # closes the picker, keeps the dialog
        self.wait().until(ec.invisibility_of_element_located((By.CSS_SELECTOR, OPEN_POPOVER)))

    def param_input(self, dialog: WebElement, param: str) -> WebElement:
        """The input of a DAG param in the trigger form, found by its label."""
        return dialog.find_element(
            By.XPATH, f".//div[@role='group'][.//label[normalize-space(text())='{param}']]//input"
        )

    def wait_closed(self, dialog: WebElement) -> None:
        """Until a dialog has gone away (after its submit button)."""

        def closed(_: object) -> bool:
            try:
                return not dialog.is_displayed()
            except StaleElementReferenceException:  # React removed it
                return True

        self.wait().until(closed)


def replace_text(field: WebElement, text: str) -> None:
    """Clear a (React-controlled) input the way a user does, then type `text`."""
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.BACKSPACE)
    field.send_keys(text)
