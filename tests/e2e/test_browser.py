"""The Airflow UI of the main job in a real browser: headless Chromium (Debian's chromium
and chromium-driver) driven by Selenium signs in, finds the pipeline's DAGs, starts a
backfill of `market_data` and a promotion from the UI's forms, and opens the Models page.
Every effect is checked where it lands (Airflow's REST API, the cryptobots database), not
on the page alone. Screenshots of each step go to `var/screenshots/<test>--<step>.png`."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from pipeline.db.engine import create_engine
from pipeline.db.schema import model_versions, promotion_events
from pipeline.models.registry import alias, model_name, promotion_history
from pipeline.ops.airflow_api import AirflowAPI
from tests.support.browser_airflow import (
    AirflowUI,
    missing_browser,
    poll,
    replace_text,
    start_chromium,
)
from tests.support.main_job import Stack

if (why := missing_browser()) is not None:
    if os.environ.get("CI"):  # CI must run them: a missing browser fails, loudly
        pytest.fail(why, pytrace=False)
    pytest.skip(why, allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "var" / "screenshots"
ADMIN = "admin"
PIPELINE_DAGS = {"market_data", "train", "promote"}
MODEL = model_name("binance:BTC/USDT:1h")
HOUR = timedelta(hours=1)
BACKFILL_AGO = timedelta(days=3)  # well inside the stored history
RUN_SECONDS = 300
FINISHED = {"success", "failed"}
ANSWER_AFTER_SECONDS = 15


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chrome]:
    """One headless Chromium with a fresh profile for the module; quit at the end."""
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def ui(browser: Chrome, stack: Stack, request: pytest.FixtureRequest) -> AirflowUI:
    """The browser on the stack's Airflow UI, its screenshots named after the test."""
    page = AirflowUI(browser, stack.airflow, SCREENSHOTS)
    page.test = request.node.name
    return page


@pytest.fixture(scope="module")
def api(stack: Stack) -> AirflowAPI:
    return AirflowAPI(stack.airflow, ADMIN, stack.password)


@pytest.fixture(scope="module")
def engine(stack: Stack) -> sa.Engine:
    return create_engine(stack.db_url)


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def finished_run(api: AirflowAPI, dag_id: str, run_id: str, seen: dict[str, Any]) -> Any:
    """The run once it finished (None before); what it looked like last goes into `seen`."""
    seen["run"] = api.request("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")
    seen["tasks"] = api.task_states(dag_id, quote(run_id, safe=""))
    return seen["run"] if seen["run"]["state"] in FINISHED else None


def test_the_admin_logs_in_and_sees_the_pipeline_dags(stack: Stack, ui: AirflowUI) -> None:
    ui.driver.delete_all_cookies()
    ui.open("/dags")
    ui.wait().until(ec.url_contains("/auth/login"))
    ui.sign_in(ADMIN, stack.password)

    ui.open("/dags")
    listed = ui.wait().until(lambda _: (found := ui.dag_ids_listed()) >= PIPELINE_DAGS and found)
    ui.shot("dag-list")
    # the session is Airflow's own: the UI's token is accepted by its REST API
    answer = httpx.get(
        f"{stack.airflow}/api/v2/dags",
        params={"limit": 100},
        headers={"Authorization": f"Bearer {ui.token()}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    dags = {dag["dag_id"]: dag for dag in answer.json()["dags"]}
    assert set(dags) == listed
    assert not any(dags[dag_id]["is_paused"] for dag_id in PIPELINE_DAGS)


def test_a_backfill_of_market_data_started_from_the_ui_runs(
    stack: Stack, ui: AirflowUI, api: AirflowAPI, engine: sa.Engine
) -> None:
    ui.ensure_signed_in(ADMIN, stack.password)
    first = (datetime.now(UTC) - BACKFILL_AGO).replace(minute=0, second=0, microsecond=0)
    last = first + HOUR  # From and To are logical dates, both included: two hourly runs
    dialog = ui.open_trigger_dialog("market_data")
    ui.choose(dialog, "Backfill")
    ui.set_datetime(dialog, 0, first)
    ui.set_datetime(dialog, 1, last)
    ui.wait().until(lambda _: "2 runs will be triggered" in dialog.text)
    replace_text(dialog.find_element(By.NAME, "max_active_runs"), "2")
    ui.shot("backfill-form")
    dialog.find_element(By.XPATH, ".//button[normalize-space()='Run Backfill']").click()
    ui.wait_closed(dialog)
    ui.wait().until(
        ec.visibility_of_element_located(
            (By.XPATH, "//*[contains(normalize-space(text()), 'Backfill in progress')]")
        )
    )
    ui.shot("backfill-started")

    backfills = api.request("GET", "/backfills", params={"dag_id": "market_data"})["backfills"]
    ours = [b for b in backfills if datetime.fromisoformat(b["from_date"]) == first]
    assert len(ours) == 1, backfills
    assert datetime.fromisoformat(ours[0]["to_date"]) == last
    assert ours[0]["max_active_runs"] == 2

    seen: dict[str, Any] = {}

    def runs() -> list[dict]:
        seen["runs"] = found = api.request(
            "GET",
            "/dags/market_data/dagRuns",
            params={
                "run_type": "backfill",
                "logical_date_gte": first.isoformat(),
                "logical_date_lte": last.isoformat(),
            },
        )["dag_runs"]
        return found if len(found) == 2 and {r["state"] for r in found} <= FINISHED else []

    done = poll(runs, RUN_SECONDS, lambda: f"backfill runs unfinished: {seen.get('runs')}")
    ui.open("/dags/market_data/backfills")
    ui.wait().until(
        ec.visibility_of_element_located(
            (
                By.XPATH,
                "//td[@data-testid='table-cell-date_from']"
                f"[.//time[@datetime='{first:%Y-%m-%dT%H:%M:%SZ}']]",
            )
        )
    )
    ui.shot("backfill-finished")
    assert {r["state"] for r in done} == {"success"}, [(r["dag_run_id"], r["state"]) for r in done]
    assert sorted(datetime.fromisoformat(r["logical_date"]) for r in done) == [first, last]

    with engine.connect() as conn:
        stored_markets = {
            ":".join(row)
            for row in conn.execute(
                sa.text("SELECT DISTINCT exchange, symbol, timeframe FROM ohlcv")
            )
        }
    for run in done:
        run_id = quote(run["dag_run_id"], safe="")
        start, end = ms(run["data_interval_start"]), ms(run["data_interval_end"])
        ingests = [
            ti
            for ti in api.request("GET", f"/dags/market_data/dagRuns/{run_id}/taskInstances")[
                "task_instances"
            ]
            if ti["task_id"].startswith("ingest_")
        ]
        summaries = [
            api.request(
                "GET",
                f"/dags/market_data/dagRuns/{run_id}/taskInstances/{ti['task_id']}"
                "/xcomEntries/return_value",
                params={"map_index": ti["map_index"]},
            )["value"]
            for ti in ingests
        ]
        assert {s["market"] for s in summaries} == stored_markets
        for summary in summaries:
            assert (summary["start"], summary["end"]) == (start, end), summary
            assert summary["fetched"] >= 1, summary
            exchange, symbol, timeframe = summary["market"].split(":")
            with engine.connect() as conn:
                stored = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM ohlcv WHERE exchange = :e AND symbol = :s "
                        "AND timeframe = :t AND ts >= :a AND ts < :b"
                    ),
                    {"e": exchange, "s": symbol, "t": timeframe, "a": start, "b": end},
                ).scalar_one()
            assert stored == summary["inserted"] + summary["updated"] + summary["unchanged"]
            assert stored + summary["quarantined"] >= 1, summary


def register_copy(engine: sa.Engine, source: str, name: str) -> None:
    """Version 1 of `name`: the champion of `source`, the same verified artifact. The trader
    does not serve `name`, so promoting it leaves the paper trading of the others alone."""
    champion = alias(engine, source)
    assert champion is not None, f"{source} has no champion"
    row = {c.name: champion[c.name] for c in model_versions.c if c.name != "created_at"}
    with engine.begin() as conn:
        conn.execute(
            sa.insert(model_versions).values(
                row | {"name": name, "version": 1, "status": "candidate"}
            )
        )


def test_promote_triggered_through_its_params_form_records_a_promotion(
    stack: Stack, ui: AirflowUI, api: AirflowAPI, engine: sa.Engine
) -> None:
    ui.ensure_signed_in(ADMIN, stack.password)
    mark = uuid.uuid4().hex[:8]
    name, reason = f"browser-e2e-{mark}", f"promoted from the browser test {mark}"
    register_copy(engine, MODEL, name)

    dialog = ui.open_trigger_dialog("promote")
    replace_text(ui.param_input(dialog, "name"), name)
    replace_text(ui.param_input(dialog, "version"), "1")
    replace_text(ui.param_input(dialog, "reason"), reason)
    assert not ui.param_input(dialog, "force").is_selected()
    ui.shot("params-form")
    ui.wait().until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid='trigger-dag-submit']"))
    ).click()
    ui.wait_closed(dialog)

    def ours() -> dict | None:
        found = api.request("GET", "/dags/promote/dagRuns", params={"limit": 100})["dag_runs"]
        return next((r for r in found if (r["conf"] or {}).get("reason") == reason), None)

    run_id = poll(ours, 30, lambda: "no promote run with the reason entered")["dag_run_id"]
    seen: dict[str, Any] = {}
    run = poll(lambda: finished_run(api, "promote", run_id, seen), RUN_SECONDS, lambda: str(seen))
    ui.open(f"/dags/promote/runs/{run_id}")
    ui.wait().until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid='state-badge']"))
    )
    ui.shot("run")
    assert run["state"] == "success", seen
    assert run["conf"] == {
        "name": name,
        "version": 1,
        "force": False,
        "approval": False,
        "reason": reason,
    }

    with engine.connect() as conn:
        events = (
            conn.execute(
                sa.select(promotion_events).where(promotion_events.c.who == f"airflow:{run_id}")
            )
            .mappings()
            .all()
        )
    assert len(events) == 1, events
    event = events[0]
    assert (event["name"], event["action"], event["to_version"]) == (name, "promote", 1)
    assert event["reason"] == reason
    assert not event["forced"]
    assert alias(engine, name)["version"] == 1


def answer_in_the_browser(
    ui: AirflowUI, api: AirflowAPI, run_id: str, option: str, expect: list[str]
) -> None:
    """Wait for the run's approve task to ask, open its Required Actions page, check the
    evidence shown (`expect`) and press `option`."""
    seen: dict[str, Any] = {}

    def asking() -> bool:
        seen["tasks"] = api.task_states("promote", quote(run_id, safe=""))
        try:
            seen["hitl"] = api.request(
                "GET",
                f"/dags/promote/dagRuns/{quote(run_id, safe='')}"
                "/taskInstances/approve/-1/hitlDetails",
            )
        except httpx.HTTPStatusError as error:  # 404 until the task asks
            seen["hitl"] = error.response.status_code
            return False
        if seen["hitl"].get("response_received"):
            return False
        task = f"/dags/promote/dagRuns/{quote(run_id, safe='')}/taskInstances/approve"
        return api.request("GET", task)["state"] == "awaiting_input"

    poll(asking, RUN_SECONDS, lambda: f"the approve task never asked: {seen}")
    # a person reads first: Airflow 3.3.2 loses an answer given in the few seconds before
    # the asking task's process has exited (the retry then finds the task in a bad state)
    time.sleep(ANSWER_AFTER_SECONDS)
    ui.open("/required_actions?response_received=false")  # Browse > Required Actions
    ui.wait().until(
        ec.presence_of_element_located(
            (By.XPATH, f"//*[contains(normalize-space(), '{seen['hitl']['subject']}')]")
        )
    )
    ui.shot(f"listed-{option.lower()}")
    ui.open(f"/dags/promote/runs/{quote(run_id, safe='')}/tasks/approve/required_actions")
    button = ui.wait().until(
        ec.element_to_be_clickable((By.XPATH, f"//button[normalize-space()='{option}']"))
    )
    page = ui.driver.find_element(By.TAG_NAME, "body").text
    ui.shot(f"asked-{option.lower()}")
    for text in expect:
        assert text in page, f"{text!r} not on the Required Actions page"
    button.click()


def test_a_live_style_promotion_waits_for_a_person_who_rejects_then_approves_it(
    stack: Stack, ui: AirflowUI, api: AirflowAPI, engine: sa.Engine
) -> None:
    ui.ensure_signed_in(ADMIN, stack.password)
    name = f"browser-approval-{uuid.uuid4().hex[:8]}"
    register_copy(engine, MODEL, name)
    evidence = ["Promote", name, "Walk-forward", "DSR", "PSR", "evidence", "buy and hold"]

    rejected = api.trigger("promote", {"name": name, "version": 1, "approval": True})
    answer_in_the_browser(ui, api, rejected, "Reject", evidence)
    seen: dict[str, Any] = {}
    run = poll(lambda: finished_run(api, "promote", rejected, seen), RUN_SECONDS, lambda: str(seen))
    assert run["state"] == "success", seen
    assert seen["tasks"].get("skipped", 0) >= 1, "apply is skipped on a rejection"
    assert alias(engine, name) is None, "a rejection leaves the champion unchanged"
    refusal = promotion_history(engine, name)
    assert [(e["action"], e["who"], e["to_version"]) for e in refusal] == [
        ("reject", f"approval:{ADMIN}", 1)
    ]

    approved = api.trigger("promote", {"name": name, "version": 1, "approval": True})
    answer_in_the_browser(ui, api, approved, "Approve", evidence)
    run = poll(lambda: finished_run(api, "promote", approved, seen), RUN_SECONDS, lambda: str(seen))
    assert run["state"] == "success", seen
    assert alias(engine, name)["version"] == 1
    move = promotion_history(engine, name)[0]
    assert (move["action"], move["who"]) == ("promote", f"airflow:{approved}")
    assert move["reason"] == f"approved by {ADMIN}"
    assert move["gates"]["approval"]["approved"] is True


def test_the_models_page_shows_the_champion(stack: Stack, ui: AirflowUI, engine: sa.Engine) -> None:
    ui.ensure_signed_in(ADMIN, stack.password)
    champion = alias(engine, MODEL)
    assert champion is not None
    version = int(champion["version"])
    latest = promotion_history(engine, MODEL)[0]

    ui.open("/dags")
    ui.nav_link("Models").click()
    ui.wait().until(ec.url_contains("/plugin/"))
    frame = ui.wait().until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "iframe[src*='cryptobots-models']"))
    )
    ui.driver.switch_to.frame(frame)
    try:
        section = ui.wait().until(
            ec.visibility_of_element_located(
                (By.CSS_SELECTOR, f"section.model[data-name='{MODEL}']")
            )
        )
        heading = section.find_element(By.TAG_NAME, "h2").text
        assert MODEL in heading
        assert f"champion v{version}" in heading
        row = section.find_element(By.CSS_SELECTOR, "tr.version.champion")
        assert row.get_attribute("data-version") == str(version)
        plot = row.find_element(By.CSS_SELECTOR, "img.equity")
        ui.wait().until(
            lambda d: d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0", plot
            )
        )
        assert latest["reason"] in section.find_element(By.CSS_SELECTOR, "table.history").text
    finally:
        ui.driver.switch_to.default_content()
    ui.shot("models-page")


def test_the_arbitrage_page_is_in_the_navigation_beside_models(stack: Stack, ui: AirflowUI) -> None:
    ui.ensure_signed_in(ADMIN, stack.password)
    ui.open("/dags")
    ui.nav_link("Models")  # both stay top level, not folded into a Plugins menu
    ui.nav_link("Arbitrage").click()
    ui.wait().until(ec.url_contains("/plugin/arbitrage"))
    frame = ui.wait().until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "iframe[src*='cryptobots-arbitrage']"))
    )
    ui.driver.switch_to.frame(frame)
    try:
        empty = ui.wait().until(ec.visibility_of_element_located((By.ID, "empty")))
        assert "arbitrage_report" in empty.text
    finally:
        ui.driver.switch_to.default_content()
    ui.shot("arbitrage-page")
