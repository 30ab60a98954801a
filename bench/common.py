"""What the benchmarks share: a scratch Postgres database on the test server, the
policy network of the default size, and the floors' verdicts."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from pipeline.db.engine import create_engine
from pipeline.db.migrate import upgrade
from pipeline.settings import normalize_db_url


class Floors:
    """The floors a bench checks: `check` gives the verdict to print, `exit` ends the
    process non-zero when any failed, so that a script or CI can tell."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, name: str, ok: bool) -> str:
        """PASS or FAIL, remembering the failures."""
        if not ok:
            self.failed.append(name)
        return "PASS" if ok else "FAIL"

    def exit(self) -> None:
        """SystemExit(1) naming every failed floor; nothing when all passed."""
        if self.failed:
            raise SystemExit(f"floors failed: {', '.join(self.failed)}")


@contextmanager
def scratch_database(prefix: str) -> Iterator[sa.Engine]:
    """A fresh, migrated database on CRYPTOBOTS_TEST_PG_URL's server, dropped afterwards."""
    server_url = normalize_db_url(
        os.environ.get("CRYPTOBOTS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    server = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with server.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(
        sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    )
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with server.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


def default_policy() -> tuple[Any, Any, Any]:
    """(feature spec, Keras DQN network, lineage) of the default size: the training
    features (identity normalization), two hidden layers of 64, long/flat actions."""
    from pipeline.learn.export import Lineage
    from pipeline.learn.features import FeatureSpec
    from pipeline.learn.rl.networks import q_network
    from pipeline.settings import TrainingSettings

    spec = FeatureSpec(features=TrainingSettings().features)
    spec = FeatureSpec(features=spec.features, mean=(0.0,) * spec.dim, std=(1.0,) * spec.dim)
    model = q_network(spec.dim + 1, 2, spec.mean, spec.std, hidden=(64, 64), seed=0)
    lineage = Lineage("dqn", spec, (0.0, 1.0), "bench", {"decision_every": 1}, "bench")
    return spec, model, lineage
