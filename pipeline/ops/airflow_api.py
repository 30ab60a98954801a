"""Airflow's REST API (v2) as the launcher, the Celery test and the browser test use it,
and the admin password Airflow's simple auth manager generated."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pipeline.errors import CryptobotsError
from pipeline.ops.deployment import ADMIN


@dataclass
class AirflowAPI:
    """Airflow's REST API (v2) with a token from the simple auth manager."""

    base: str
    username: str
    password: str
    token: str | None = None

    def _headers(self) -> dict[str, str]:
        if self.token is None:
            answer = httpx.post(
                f"{self.base}/auth/token",
                json={"username": self.username, "password": self.password},
                timeout=30,
            )
            answer.raise_for_status()
            self.token = answer.json()["access_token"]
        return {"Authorization": f"Bearer {self.token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call; the token is renewed once when it expired."""
        for attempt in range(2):
            answer = httpx.request(
                method, f"{self.base}/api/v2{path}", headers=self._headers(), timeout=30, **kwargs
            )
            if answer.status_code == 401 and attempt == 0:
                self.token = None
                continue
            answer.raise_for_status()
            return answer.json() if answer.content else None
        return None

    def healthy(self) -> bool:
        """The API server answers and the scheduler heartbeats."""
        try:
            health = httpx.get(f"{self.base}/api/v2/monitor/health", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return False
        return health.get("scheduler", {}).get("status") == "healthy"

    def dag_ids(self) -> set[str]:
        """The DAGs Airflow has parsed."""
        return {d["dag_id"] for d in self.request("GET", "/dags", params={"limit": 100})["dags"]}

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any], logical_date: str | None = None) -> str:
        """A manual run of `dag_id` with `conf` (for `logical_date`, ISO, if given); its id."""
        run = self.request(
            "POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": logical_date, "conf": conf}
        )
        return str(run["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def task_states(self, dag_id: str, run_id: str) -> dict[str, int]:
        """How many of the run's task instances are in each state."""
        found = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        counts: dict[str, int] = {}
        for ti in found["task_instances"]:
            state = ti.get("state") or "waiting"
            counts[state] = counts.get(state, 0) + 1
        return counts


def admin_password(path: Path) -> str:
    """The admin password the simple auth manager generated (kept across runs)."""
    deadline = time.monotonic() + 60
    while not path.exists():
        if time.monotonic() > deadline:
            raise CryptobotsError(f"Airflow wrote no password file at {path}")
        time.sleep(0.5)
    return str(json.loads(path.read_text())[ADMIN])
