"""The model registry: content-addressed artifacts, verified loads, atomic alias moves."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import onnx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.errors import ModelRejected
from pipeline.learn.features import FeatureSpec
from pipeline.models.registry import (
    PromotionConflict,
    alias,
    archive,
    list_versions,
    load_verified,
    move_alias,
    promotion_history,
    record_refusal,
    register,
    rollback,
)
from tests.support.policies import exported_policy

SPEC = FeatureSpec(features=("ret_1", "ret_4", "rsi_14"), mean=(0.0,) * 3, std=(1.0,) * 3)


def exported(folder: Path, seed: int) -> Path:
    return exported_policy(folder, seed, SPEC, metrics={"valid": [1, 2]})


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("exports")
    return [exported(folder, seed) for seed in range(3)]


@pytest.fixture
def registry(db_url: str, tmp_path: Path, fresh_pg) -> tuple[Engine, str]:
    from pipeline.db.engine import create_engine
    from pipeline.db.migrate import upgrade

    if db_url.startswith("sqlite"):
        engine = create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
        upgrade(engine)
    else:
        engine = fresh_pg()
    return engine, f"file://{tmp_path / 'artifacts'}"


def state(engine: Engine) -> list:
    with engine.connect() as conn:
        return [
            conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1, 2")).all()
            for table in ("model_versions", "model_aliases", "promotion_events")
        ]


def test_registered_versions_are_numbered_and_stored_once_by_content(
    registry: tuple[Engine, str], files: list[Path], tmp_path: Path
) -> None:
    engine, root = registry
    assert [register(engine, root, path, "btc") for path in (files[0], files[1], files[0])] == [
        1,
        2,
        3,
    ]
    stored = sorted((tmp_path / "artifacts").rglob("*.onnx"))
    assert len(stored) == 2
    versions = list_versions(engine, "btc")
    assert [v["version"] for v in versions] == [3, 2, 1]
    assert versions[0]["sha256"] == versions[2]["sha256"]
    assert versions[0]["training_run"] == "run-0"
    assert versions[0]["status"] == "candidate"


def test_an_in_memory_fsspec_root_works(files: list[Path], tmp_path: Path, fresh_pg) -> None:
    engine = fresh_pg()
    version = register(engine, "memory://cryptobots-test", files[0], "btc")
    verified = load_verified(engine, "btc", version, tmp_path / "cache")
    assert verified.lineage.training_run == "run-0"


def test_promote_then_rollback_moves_the_champion_with_an_audit_row(
    registry: tuple[Engine, str], files: list[Path]
) -> None:
    engine, root = registry
    first, second = (register(engine, root, path, "btc") for path in files[:2])
    move_alias(engine, "btc", first, seen_generation=None, who="alice", reason="first")
    champion = alias(engine, "btc")
    move_alias(
        engine, "btc", second, seen_generation=champion["generation"], who="bob", reason="better"
    )
    assert alias(engine, "btc")["version"] == second
    rollback(engine, "btc", who="carol", reason="bad fills")
    assert alias(engine, "btc")["version"] == first
    history = promotion_history(engine, "btc")
    assert [(h["action"], h["from_version"], h["to_version"], h["who"]) for h in history] == [
        ("rollback", second, first, "carol"),
        ("promote", first, second, "bob"),
        ("promote", None, first, "alice"),
    ]


def test_a_refused_promotion_is_audited_without_moving_and_rollback_skips_it(
    registry: tuple[Engine, str], files: list[Path]
) -> None:
    engine, root = registry
    first, second, third = (register(engine, root, path, "btc") for path in files[:3])
    move_alias(engine, "btc", first, seen_generation=None, who="alice", reason=None)
    seen = alias(engine, "btc")["generation"]
    move_alias(engine, "btc", second, seen_generation=seen, who="bob", reason=None)
    refusal = record_refusal(engine, "btc", third, who="approval:carol", reason="rejected")
    assert (refusal["action"], refusal["from_version"], refusal["to_version"]) == (
        "reject",
        second,
        third,
    )
    assert alias(engine, "btc")["version"] == second
    assert [h["action"] for h in promotion_history(engine, "btc")] == [
        "reject",
        "promote",
        "promote",
    ]
    rollback(engine, "btc", who="dave")
    assert alias(engine, "btc")["version"] == first


def test_a_move_from_a_stale_generation_is_a_conflict_that_changes_nothing(
    registry: tuple[Engine, str], files: list[Path]
) -> None:
    engine, root = registry
    first, second = (register(engine, root, path, "btc") for path in files[:2])
    move_alias(engine, "btc", first, seen_generation=None, who="a", reason=None)
    before = state(engine)
    with pytest.raises(PromotionConflict, match="moved by another promotion"):
        move_alias(engine, "btc", second, seen_generation=None, who="b", reason=None)
    with pytest.raises(PromotionConflict):
        move_alias(engine, "btc", second, seen_generation=7, who="b", reason=None)
    assert state(engine) == before


def test_the_champion_cannot_be_archived_and_an_archived_version_cannot_be_promoted(
    registry: tuple[Engine, str], files: list[Path]
) -> None:
    engine, root = registry
    first, second = (register(engine, root, path, "btc") for path in files[:2])
    move_alias(engine, "btc", first, seen_generation=None, who="a", reason=None)
    with pytest.raises(ModelRejected, match="is the champion"):
        archive(engine, "btc", first)
    archive(engine, "btc", second)
    with pytest.raises(ModelRejected, match="archived"):
        move_alias(engine, "btc", second, seen_generation=1, who="a", reason=None)


def corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-40] + b"\0" * 40)


def test_a_corrupt_artifact_is_refused_naming_the_version(
    registry: tuple[Engine, str], files: list[Path], tmp_path: Path
) -> None:
    engine, root = registry
    version = register(engine, root, files[0], "btc")
    stored = next((tmp_path / "artifacts").rglob("*.onnx"))
    corrupt(stored)
    before = state(engine)
    with pytest.raises(ModelRejected, match=f"btc v{version}: checksum mismatch"):
        load_verified(engine, "btc", version, tmp_path / "cache")
    assert state(engine) == before


def edited(source: Path, folder: Path, edit) -> Path:
    proto = onnx.load(str(source))
    edit(proto)
    target = folder / f"{edit.__name__}-{source.name}"
    onnx.save(proto, str(target))
    return target


def test_bad_files_are_refused_at_registration_and_nothing_is_recorded(
    registry: tuple[Engine, str], files: list[Path], tmp_path: Path
) -> None:
    engine, root = registry
    before = state(engine)

    def no_metadata(proto) -> None:
        del proto.metadata_props[:]

    def other_spec(proto) -> None:
        wider = FeatureSpec(features=("ret_1", "ret_4", "rsi_14", "vol_24"))
        for prop in proto.metadata_props:
            if prop.key == "feature_spec":
                prop.value = wider.to_json()

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    cases = [
        (edited(files[0], tmp_path, no_metadata), "lacks metadata"),
        (edited(files[0], tmp_path, other_spec), "input signature"),
        (broken, "ONNX checker refuses"),
    ]
    for path, message in cases:
        with pytest.raises(ModelRejected, match=message):
            register(engine, root, path, "btc")
    assert state(engine) == before
    assert not list((tmp_path / "artifacts").rglob("*.onnx"))


def _promote_racing(url: str, version: int, generation: int, barrier, results) -> None:
    from pipeline.db.engine import create_engine

    engine = create_engine(url)
    barrier.wait()
    try:
        move_alias(engine, "btc", version, seen_generation=generation, who=str(version), reason="")
        results.put(("won", version))
    except PromotionConflict:
        results.put(("conflict", version))


@pytest.mark.postgres
def test_two_concurrent_promotions_one_wins_the_other_gets_a_conflict(
    files: list[Path], tmp_path: Path, fresh_pg
) -> None:
    engine = fresh_pg()
    root = f"file://{tmp_path / 'artifacts'}"
    first, second, third = (register(engine, root, path, "btc") for path in files)
    move_alias(engine, "btc", first, seen_generation=None, who="setup", reason=None)
    url = engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    racers = [
        context.Process(target=_promote_racing, args=(url, version, 1, barrier, results))
        for version in (second, third)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(120)
    outcomes = sorted(results.get(timeout=5) for _ in racers)
    assert [kind for kind, _ in outcomes] == ["conflict", "won"]
    winner = next(version for kind, version in outcomes if kind == "won")
    assert alias(engine, "btc")["version"] == winner
    assert alias(engine, "btc")["generation"] == 2
    assert len(promotion_history(engine, "btc")) == 2
