"""The simulator's own endpoints under `/sim/` (not Binance's API; never limited, never
faulted): `/sim/stats` counts, `/sim/plant` plants mispricings in the books,
`/sim/leg-fault` makes the next orders on a market fail in a chosen way."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request

from pipeline.exchanges.simulator.faults import LegFault
from pipeline.exchanges.simulator.market import Plant

if TYPE_CHECKING:
    from pipeline.exchanges.simulator.app import Exchange


class ControlRoutes:
    """The `/sim/` endpoints that read and steer `exchange` at run time."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange

    def register(self, app: FastAPI) -> None:
        app.get("/sim/stats")(self.stats)
        app.post("/sim/plant")(self.add_plant)
        app.get("/sim/plant")(self.list_plants)
        app.delete("/sim/plant")(self.clear_plants)
        app.post("/sim/leg-fault")(self.add_leg_fault)
        app.get("/sim/leg-fault")(self.list_leg_faults)
        app.delete("/sim/leg-fault")(self.clear_leg_faults)

    async def stats(self) -> dict:
        """The simulator's own counters (not part of Binance's API; never limited)."""
        exchange = self.exchange
        return {
            "answered": {str(k): v for k, v in exchange.limiter.answered.items()},
            "injected": dict(exchange.faults.injected),
            "leg_faults": dict(exchange.leg_faults.consumed),
            "kraken_refused": exchange.counter.refused if exchange.counter else 0,
            "clock_ms": exchange.clock.now_ms(),
        }

    async def add_plant(self, request: Request) -> dict:
        """Plant a mispricing: {"symbol": "ETHBTC", "bps": 40.0, "seconds": 60.0}."""
        plant = await _control(request, Plant)
        try:
            self.exchange.pricing.plant(plant)
        except ValueError as error:
            raise HTTPException(400, str(error)) from None
        return {"plants": self.exchange.pricing.plants()}

    async def list_plants(self) -> dict:
        return {"plants": self.exchange.pricing.plants()}

    async def clear_plants(self) -> dict:
        self.exchange.pricing.clear()
        return {"plants": []}

    async def add_leg_fault(self, request: Request) -> dict:
        """Fault the next orders on a market: {"symbol": "ETHBTC", "kind": "reject"|"partial"|
        "delay", "count": 1, "fraction": 0.5, "seconds": 2.0}, or the next margin borrows of
        an asset: {"symbol": "BTC", "kind": "refuse-borrow"}."""
        exchange = self.exchange
        fault = await _control(request, LegFault)
        if fault.kind == "refuse-borrow":
            assets = {f.recording.base for f in exchange.markets().values()}
            assets |= {f.recording.quote for f in exchange.markets().values()}
            if fault.symbol not in assets:
                raise HTTPException(
                    400,
                    f"unknown asset {fault.symbol!r} for refuse-borrow: this exchange lends "
                    f"{', '.join(sorted(assets))}",
                )
        elif fault.symbol not in exchange.markets():
            raise HTTPException(
                400,
                f"unknown symbol {fault.symbol!r}: this exchange serves "
                f"{', '.join(sorted(exchange.markets()))}",
            )
        exchange.leg_faults.add(fault)
        return {"leg_faults": exchange.leg_faults.listing()}

    async def list_leg_faults(self) -> dict:
        return {"leg_faults": self.exchange.leg_faults.listing()}

    async def clear_leg_faults(self) -> dict:
        self.exchange.leg_faults.clear()
        return {"leg_faults": []}


async def _control(request: Request, kind: type) -> Any:
    """A `kind` dataclass from a JSON object body; HTTP 400 saying what is wrong."""
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the body is not a JSON object")
    known = {f.name for f in fields(kind)}
    required = {
        f.name for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING
    }
    if unknown := sorted(set(body) - known):
        raise HTTPException(400, f"unknown field(s) {unknown}; known: {sorted(known)}")
    if missing := sorted(required - set(body)):
        raise HTTPException(400, f"missing field(s) {missing}")
    try:
        return kind(**body)
    except (TypeError, ValueError) as error:
        raise HTTPException(400, str(error)) from None
