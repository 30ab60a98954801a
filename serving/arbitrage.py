"""The arbitrage trader (`python -m serving --strategy arbitrage`): cycles inside one
exchange, found on live books and traded leg by leg, on paper unless told otherwise.

Each step polls the book of every configured market, re-weighs the exchange graph,
re-evaluates every 3-cycle through home (and, past 3 legs, runs the cycle search), sizes
the best candidates against the books and, when one pays at least `min_edge_bps` after
fees and rounding and the risk gate allows, trades it:

1. the opportunity is written (id = sha256 of account, exchange, cycle and time);
2. each leg is written (pending) and then sent as a limit IOC order at the price of the
   worst book level the sizing reached, with a client order id derived from
   (opportunity id, leg): a leg is never sent twice under two ids, and a crash between
   writing and sending is settled by asking the exchange for that id;
3. the next leg spends what the previous one actually received.

A leg that is rejected, fills partly or not at all leaves currencies other than home:
the exposure. It is closed at once at market, by whichever exit returns more home at the
current books: straight back to home, or the rest of the cycle. The realized profit
(home received minus home spent; rounding dust valued at zero) is recorded against the
expected one. A restart first settles every pending leg with the exchange and closes
any exposure left open, before anything new is sent.

What rounding leaves behind adds up: the dust per currency is derived from the finished
legs, reported on `/readyz` and `/metrics`, and swept back to home by one order once it
passes a direct market's minimums (`serving.arbitrage_dust`, `arbitrage.sweep_dust`).

Started by `python -m serving`, it trades only while it holds the lease of its markets
(`serving.lease`, keyed `arbitrage:<exchange>:<symbol>`, apart from the model trader's
markets), and every leg is written under that lease's fencing token: a second trader
stands by (or refuses to start, naming the holder) and takes over within
`serving.failover_seconds`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy.engine import Engine

from pipeline.arbitrage import (
    ArbitrageConfig,
    Cycle,
    CycleSearch,
    CycleSize,
    ExchangeGraph,
    Leg,
    MarketSpec,
    Triangles,
    leg_receives,
    size_cycle,
)
from pipeline.errors import ConfigurationError, CryptobotsError
from pipeline.exchanges.client import ExchangeClient
from pipeline.settings import Settings
from pipeline.timeutil import DAY_MS
from serving import arbitrage_dust as dust
from serving import arbitrage_store as store
from serving.arbitrage_risk import CycleGate
from serving.broker import Broker
from serving.lease import Lease, LeaseLost, Renewer, Role
from serving.metrics import RISK_CODES
from serving.risk import MarketRules
from serving.store import Execution, record_transitions
from serving.trader import DB_ERRORS, exchange_totals

log = logging.getLogger("serving.arbitrage")

CLIENT_ID_PREFIX = "ab"
UNWIND_SEQ = 10  # unwind legs are numbered from here, after the cycle's own
MAX_EXIT_LEGS = 8  # an exit never needs more than the cycle's length; this bounds a loop
MAX_REFUSED_EXITS = 3  # then the exposure is recorded as left open, for a person to close
CANDIDATES = 5  # best cycles at the top of the books that are sized against depth
FILLED = 1 - 1e-9


def opportunity_id(account: str, exchange: str, cycle: Cycle, detected_ms: int) -> str:
    """Deterministic id of an opportunity: account, exchange, legs and detection time."""
    legs = ">".join(f"{leg.symbol}:{leg.side}" for leg in cycle.legs)
    return hashlib.sha256(f"{account}|{exchange}|{legs}|{detected_ms}".encode()).hexdigest()[:32]


def leg_client_id(opportunity: str, seq: int) -> str:
    """Deterministic client order id of leg `seq` of an opportunity (32 characters)."""
    digest = hashlib.sha256(f"{opportunity}|{seq}".encode()).hexdigest()[:30]
    return f"{CLIENT_ID_PREFIX}{digest}"


@dataclass
class ArbitrageMetrics:
    """The arbitrage trader's Prometheus metrics, in a registry of its own."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.opportunities = Counter(
            "cryptobots_arbitrage_opportunities",
            "cycles above the threshold, by what became of them",
            ["outcome"],
            registry=r,
        )
        self.legs = Counter(
            "cryptobots_arbitrage_legs",
            "legs and unwinds by status",
            ["kind", "status"],
            registry=r,
        )
        self.leg_failures = Counter(
            "cryptobots_arbitrage_leg_failures", "legs that failed and were unwound", registry=r
        )
        self.realized = Gauge(
            "cryptobots_arbitrage_realized_profit", "realized profit since start, home", registry=r
        )
        self.detection = Histogram(
            "cryptobots_arbitrage_detection_seconds",
            "books received -> first leg handed to the broker",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=r,
        )
        self.dust = Gauge(
            "cryptobots_arbitrage_dust",
            "what finished cycles left in each currency other than home, until swept",
            ["currency"],
            registry=r,
        )
        self.risk_state = Gauge(
            "cryptobots_arbitrage_risk_state", "0 ACTIVE, 1 REDUCING, 2 HALTED", registry=r
        )
        self.exchange_errors = Counter(
            "cryptobots_exchange_errors", "failed exchange calls", ["exchange"], registry=r
        )
        self.db_up = Gauge("cryptobots_db_up", "1 when the state database answers", registry=r)
        self.active = Gauge(
            "cryptobots_trader_active", "1 while this trader holds its markets' lease", registry=r
        )


class ArbitrageTrader:
    """Finds and trades cycles on one exchange; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        exchange: ExchangeClient,
        broker: Broker,
        *,
        metrics: ArbitrageMetrics | None = None,
        clock: Callable[[], float] = time.time,
        lease: Lease | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.arbitrage
        self.engine = engine
        self.exchange = exchange
        self.broker = broker
        self.clock = clock
        self.venue = self.config.exchange
        self.account = "live" if broker.live else "paper"
        self.metrics = metrics or ArbitrageMetrics()
        self.risk = CycleGate(self.config, f"arbitrage:{self.venue}")
        self.dust = dust.DustLedger(self.config.home, self.metrics.dust)
        self.markets = tuple(f"{self.venue}:{symbol}" for symbol in self.config.symbols)
        self.lock = threading.RLock()
        self.started = False
        self.reconciled = False
        self.last_books_ms: int | None = None
        self.last_error: str | None = None
        self.realized_total = 0.0
        self.balances: dict[str, float] = {}
        self.tops: dict[str, tuple[float | None, float | None]] = {}
        self.latency: dict[str, float] = {}  # seconds, books seen -> first leg handed over
        self.acted_on: tuple[Any, ...] | None = None  # paper: the cycle and books last traded
        self.lease = lease  # None: trades without one (a library user, a test)
        self.role = Role(lease, self.metrics.active)

    # -- start and reconcile ---------------------------------------------------------

    def start(self) -> None:
        """Load the markets, build the graph and the searches, restore the gate's limits,
        then settle whatever a previous run left open."""
        markets = self.exchange.load_markets()
        missing = [s for s in self.config.symbols if s not in markets]
        if missing:
            raise ConfigurationError(
                f"arbitrage symbols {missing} are not traded on {self.venue}: fix "
                "CRYPTOBOTS_ARBITRAGE__SYMBOLS (some of "
                f"{', '.join(sorted(markets)[:20])})"
            )
        fee = self.config.taker_fee_bps
        specs = []
        for symbol in self.config.symbols:
            spec = MarketSpec.from_ccxt(markets[symbol])
            if fee is not None:
                spec = MarketSpec(spec.symbol, spec.base, spec.quote, fee / 10_000)
            specs.append(spec)
        self.graph = ExchangeGraph(specs)
        self.fees = {spec.symbol: spec.taker_fee for spec in specs}
        if self.config.home not in self.graph.index:
            raise ConfigurationError(
                f"arbitrage home {self.config.home} is in none of the symbols "
                f"{list(self.config.symbols)}: set CRYPTOBOTS_ARBITRAGE__HOME or add markets"
            )
        search = ArbitrageConfig(
            home=self.config.home,
            max_length=self.config.max_length,
            min_edge_bps=self.config.min_edge_bps,
        )
        self.triangles = Triangles(self.graph, search)
        self.search = CycleSearch(self.graph, search) if self.config.max_length > 3 else None
        mode = getattr(self.exchange.client, "precisionMode", None)
        self.rules = {
            s: MarketRules.from_ccxt(markets[s], *(() if mode is None else (mode,)))
            for s in self.config.symbols
        }
        now = self._now()
        past = store.history(self.engine, self.account, self.venue, now - DAY_MS)
        self.risk.restore(
            (p["detected_ms"] for p in past),
            ((p["detected_ms"], p["realized_profit"] or 0.0) for p in past),
        )
        if not self.broker.live:
            self.balances = store.paper_balances(
                self.engine, self.account, self.venue, self.config.paper_balances
            )
        self.started = True
        if self.role.hold(self._took_over):
            self.reconcile()

    def _took_over(self) -> None:
        """Just took the lease over: settle what is open before anything is sent."""
        self.reconciled = False

    def _fence(self) -> store.Fence | None:
        if self.lease is None:
            return None
        return (self.lease.account, *self.lease.fence())

    def _lease_lost(self, error: LeaseLost) -> str:
        self.role.lost(error)
        self.reconciled = False
        return "standby"

    def reconcile(self) -> bool:
        """Settle every pending leg with the exchange and close every open exposure.

        True when nothing is left open; False while an order may still reach the exchange
        or an exit could not be traded yet (the next step tries again).
        """
        with self.lock:
            for opportunity in store.open_opportunities(self.engine, self.account, self.venue):
                for leg in opportunity["legs"]:
                    if leg["status"] == "pending" and not self._settle_pending(leg):
                        self.reconciled = False
                        return False
                if not self._close(opportunity["id"]):
                    self.reconciled = False
                    return False
            self.dust.load(self.engine, self.account, self.venue)
            self.reconciled = True
            return True

    def _settle_pending(self, leg: dict[str, Any]) -> bool:
        found = self.broker.lookup(leg["symbol"], leg["client_order_id"])
        if found is None:
            if self.broker.may_still_arrive(store.as_utc(leg["created_at"])):
                log.info("leg %s not found yet: it may still arrive", leg["client_order_id"])
                return False
            found = Execution("expired", 0.0, 0.0, error="never reached the exchange")
        elif found.status in ("open", "partial"):
            found = self.broker.cancel(leg["symbol"], leg["client_order_id"]) or found
            if found.status in ("open", "partial"):
                return False
        self._settle(leg, found)
        log.info("leg %s settled on restart: %s", leg["client_order_id"], found.status)
        return True

    # -- the loop -----------------------------------------------------------------------

    def step(self) -> str:
        """One poll: reconcile if needed, else fetch the books and trade the best cycle.

        Returns what happened: standby, reconciling, idle, small, seen (paper: this edge,
        on these books, was traded already), refused, done, unwound, pending; or, when
        dust was swept back to home instead, swept or sweep_failed.
        """
        with self.lock:
            if not self.started:
                self.start()
            if not self.role.hold(self._took_over):
                return "standby"
            try:
                if not self.reconciled and not self.reconcile():
                    return "reconciling"
                books = self._books(self.config.symbols)
                seen = time.perf_counter()
                swept = self._sweep(books, self._now())
                return swept or self.on_books(books, seen, self._now())
            except LeaseLost as error:
                return self._lease_lost(error)

    def on_books(self, books: Mapping[str, Any], seen: float, now_ms: int) -> str:
        """Detection, sizing, the gate, then the cycle (the part bench (c) times)."""
        self.last_books_ms = now_ms
        self._observe(books)
        cycles = [self.triangles.cycle(int(i)) for i in self.triangles.evaluate()]
        if self.search is not None:
            cycles += [c for c in self.search.run() if len(c.legs) > 3]
        if not cycles:
            return "idle"
        cap = self.config.max_cycle_notional
        if not self.broker.live:
            cap = min(cap, self.balances.get(self.config.home, 0.0))
        best: tuple[Cycle, CycleSize] | None = None
        for cycle in sorted(cycles, key=lambda c: c.weight)[:CANDIDATES]:
            size = size_cycle(cycle, books, self.rules, max_start=cap) if cap > 0 else None
            pays = size is not None and size.profit_bps >= self.config.min_edge_bps
            if pays and (best is None or size.profit > best[1].profit):  # type: ignore[union-attr]
                best = (cycle, size)  # type: ignore[assignment]
        if best is None:
            self.metrics.opportunities.labels("too_small").inc()
            return "small"
        cycle, size = best
        mark = None if self.broker.live else _book_mark(cycle, books)
        if mark is not None and mark == self.acted_on:
            self.metrics.opportunities.labels("already_traded").inc()
            return "seen"  # paper fills leave the books as they were: the edge is not new
        refused = self.risk.check(size.start, now_ms)
        if refused is None and self.broker.live:
            free = exchange_totals(self.exchange, self.venue).get(self.config.home, 0.0)
            if free < size.start:
                refused = f"{self.config.home} balance {free} is below the {size.start} needed"
        self._drain_risk()
        if refused is not None:
            self.metrics.opportunities.labels("refused").inc()
            log.info("cycle %s refused: %s", _path(cycle), refused)
            return "refused"
        self.acted_on = mark
        return self._trade(cycle, size, seen, now_ms)

    def _observe(self, books: Mapping[str, Any]) -> None:
        """Books into the graph's weights and the top of each book."""
        for symbol, book in books.items():
            self.graph.update_book(symbol, book)
            bids, asks = book.get("bids"), book.get("asks")
            self.tops[symbol] = (bids[0][0] if bids else None, asks[0][0] if asks else None)

    def _trade(self, cycle: Cycle, size: CycleSize, seen: float, now_ms: int) -> str:
        oid = opportunity_id(self.account, self.venue, cycle, now_ms)
        opportunity = {
            "id": oid,
            "account": self.account,
            "exchange": self.venue,
            "home": self.config.home,
            "cycle": [[g.symbol, g.side, g.source, g.target] for g in cycle.legs],
            "detected_ms": now_ms,
            "edge_bps": cycle.edge_bps,
            "expected_start": size.start,
            "expected_end": size.end,
            "expected_bps": size.profit_bps,
            "status": "executing",
        }
        have = 0.0
        for seq, planned in enumerate(size.legs):
            leg = cycle.legs[seq]
            amount = planned.amount if seq == 0 else self._leg_amount(leg, planned.price, have)
            if amount <= 0.0:
                return self._fail(oid, seq, f"leg {seq}: {have} {leg.source} is below the minimum")
            row = {
                "client_order_id": leg_client_id(oid, seq),
                "opportunity_id": oid,
                "seq": seq,
                "kind": "cycle",
                "symbol": leg.symbol,
                "side": leg.side,
                "type": "limit",
                "source": leg.source,
                "target": leg.target,
                "amount": amount,
                "price": planned.price,
            }
            if seq == 0:
                store.open_opportunity(
                    self.engine, opportunity, row, durable=self.broker.live, fence=self._fence()
                )
                self.risk.started(now_ms)
                self.latency[oid] = time.perf_counter() - seen
            else:
                store.add_leg(self.engine, row, fence=self._fence())
            execution = self.broker.execute(
                leg.symbol, leg.side, amount, row["client_order_id"], self._now(), planned.price
            )
            if seq == 0:
                self.metrics.detection.observe(self.latency[oid])
                log.info(
                    "cycle %s %s: %.6f %s in, %.6f expected back (%.1f bps)",
                    oid[:12],
                    _path(cycle),
                    size.start,
                    self.config.home,
                    size.end,
                    size.profit_bps,
                )
            if execution.status == "pending":
                self.reconciled = False
                log.warning("leg %s unanswered: reconciling before anything else", seq)
                return "pending"
            _, received = self._settle(row, execution)
            if execution.status != "filled" or execution.filled < amount * FILLED:
                why = execution.error or f"{execution.status}, {execution.filled} of {amount}"
                return self._fail(oid, seq, f"leg {seq} {leg.symbol} {leg.side}: {why}")
            have = received
        return "done" if self._close_or_recheck(oid) else "unwinding"

    def _leg_amount(self, leg: Any, price: float, have: float) -> float:
        """The base amount a leg trades with `have` of its source currency: all of it for
        a sell, what it buys at the limit price for a buy; rounded down, 0 below minimums."""
        rules = self.rules[leg.symbol]
        amount = rules.round_amount(have if leg.side == "sell" else have / price)
        if amount < (rules.min_amount or 0.0) or amount * price < (rules.min_cost or 0.0):
            return 0.0
        return amount

    def _fail(self, oid: str, seq: int, reason: str) -> str:
        self.metrics.leg_failures.inc()
        log.warning("cycle %s: %s; unwinding", oid[:12], reason)
        store.finish_opportunity(
            self.engine, oid, status="unwinding", failed_leg=seq, reason=reason
        )
        return "unwound" if self._close_or_recheck(oid) else "unwinding"

    def _close_or_recheck(self, oid: str) -> bool:
        """`_close`; when something is left open, nothing new starts until it is closed."""
        closed = self._close(oid)
        if not closed:
            self.reconciled = False
        return closed

    def _settle(self, leg: Mapping[str, Any], execution: Execution) -> tuple[float, float]:
        paper = None if self.broker.live else (self.account, self.venue)
        spent, received = store.settle_leg(self.engine, leg, execution, paper=paper)
        status = (
            "partial" if execution.status == "expired" and execution.filled else execution.status
        )
        self.metrics.legs.labels(leg["kind"], status).inc()
        if paper is not None:
            self.balances[leg["source"]] = self.balances.get(leg["source"], 0.0) - spent
            self.balances[leg["target"]] = self.balances.get(leg["target"], 0.0) + received
        return spent, received

    def _sweep(self, books: Mapping[str, Any], now_ms: int) -> str | None:
        """Send one dust sweep when some currency's dust passes the minimums of a market
        that converts it to home (`serving.arbitrage_dust`), through the cycles' gate;
        None when there is none to send or the gate refuses it."""
        if not self.config.sweep_dust:
            return None
        sweep = self.dust.next_sweep(self.rules, books, self.fees, now_ms)
        if sweep is None:
            return None
        refused = self.risk.check(sweep.home, now_ms)
        self._drain_risk()
        if refused is not None:
            log.debug("dust sweep of %s refused: %s", sweep.currency, refused)
            return None
        oid = dust.sweep_id(
            self.account, self.venue, sweep.currency, self.dust.number(sweep.currency)
        )
        opportunity, row = dust.sweep_rows(
            oid, leg_client_id(oid, 0), self.account, self.venue, self.config.home, sweep, now_ms
        )
        store.open_opportunity(
            self.engine, opportunity, row, durable=self.broker.live, fence=self._fence()
        )
        self.dust.sent(sweep.currency)
        self.risk.started(now_ms)
        log.info("dust sweep %s: %s %s %s", oid[:12], sweep.side, sweep.amount, sweep.symbol)
        execution = self.broker.execute(
            sweep.symbol, sweep.side, sweep.amount, row["client_order_id"], self._now()
        )
        if execution.status == "pending":
            self.reconciled = False
            return "pending"
        self._settle(row, execution)
        filled = execution.status == "filled"
        if not filled:
            why = execution.error or f"{execution.status}, {execution.filled} of {sweep.amount}"
            store.finish_opportunity(self.engine, oid, failed_leg=0, reason=f"sweep: {why}")
        if not self._close_or_recheck(oid):
            return "reconciling"
        return "swept" if filled else "sweep_failed"

    # -- exposure ------------------------------------------------------------------------

    def _close(self, oid: str) -> bool:
        """Trade every currency the opportunity still holds back to home, then record its
        outcome. False when an exit leg could not be settled (tried again next step)."""
        if not self.tops:  # after a restart: the minimums need prices
            self._observe(self._books(self.config.symbols))
        for _ in range(MAX_EXIT_LEGS):
            legs = store.legs_of(self.engine, oid)
            if any(leg["status"] == "pending" for leg in legs):
                return False
            refusals = sum(1 for g in legs if g["kind"] == "unwind" and g["status"] == "rejected")
            if refusals >= MAX_REFUSED_EXITS:
                held = ", ".join(f"{a} {c}" for c, a in self._exposure(legs).items())
                log.error(
                    "cycle %s: exits refused %d times; %s left open", oid[:12], refusals, held
                )
                self._record_outcome(
                    oid,
                    legs,
                    stuck=f"exits refused {refusals} times: {held} left open, close it by hand",
                )
                return True
            exposure = self._exposure(legs)
            if not exposure:
                self._record_outcome(oid, legs)
                return True
            currency, amount = next(iter(exposure.items()))
            cycle = self._cycle_of(oid)
            refused = {leg["symbol"] for leg in legs if leg["status"] == "rejected"}
            exit_leg = self._cheapest_exit(currency, amount, cycle, avoid=refused)
            if exit_leg is None:
                self._record_outcome(oid, legs, stuck=f"{amount} {currency}: no exit")
                return True
            seq = max(UNWIND_SEQ - 1, *(leg["seq"] for leg in legs)) + 1
            if not self._send_exit(oid, seq, exit_leg, amount):
                return False
        return False

    def _exposure(self, legs: list[dict[str, Any]]) -> dict[str, float]:
        """Currencies other than home the opportunity holds, above the exits' minimums."""
        held: dict[str, float] = {}
        for leg in legs:
            held[leg["source"]] = held.get(leg["source"], 0.0) - leg["spent"]
            held[leg["target"]] = held.get(leg["target"], 0.0) + leg["received"]
        held.pop(self.config.home, None)
        return {c: a for c, a in held.items() if a > 0 and self._tradable(c, a)}

    def _tradable(self, currency: str, amount: float) -> bool:
        """Whether `amount` of `currency` is above dust: some market can sell or spend it."""
        for symbol, rules in self.rules.items():
            base, quote = symbol.split("/")
            price = self._mid(symbol)
            lots = rules.round_amount(amount)
            if (
                base == currency
                and lots > 0
                and lots >= (rules.min_amount or 0.0)
                and (price is None or lots * price >= (rules.min_cost or 0.0))
            ):
                return True
            if quote == currency and price and amount >= (rules.min_cost or 0.0):
                return rules.round_amount(amount / price) > 0
        return False

    def _mid(self, symbol: str) -> float | None:
        bid, ask = self.tops.get(symbol, (None, None))
        return (bid + ask) / 2 if bid and ask else None

    def _cycle_of(self, oid: str) -> list[list[str]]:
        import sqlalchemy as sa

        from pipeline.db.schema import arb_opportunities

        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(arb_opportunities.c.cycle).where(arb_opportunities.c.id == oid)
            ).scalar_one()

    def _cheapest_exit(
        self, currency: str, amount: float, cycle: list[list[str]], avoid: set[str] = frozenset()
    ) -> tuple[str, str, str, str] | None:
        """The first market leg of the exit that returns the most home for `amount`:
        straight to home, or the rest of the cycle from `currency` on.

        A market that rejected one of this cycle's orders is not used while another exit
        exists: whatever made it refuse (a halt, a filter) may refuse the next order too."""
        home = self.config.home
        paths: list[list[tuple[str, str, str, str]]] = []
        for symbol in self.config.symbols:
            base, quote = symbol.split("/")
            if (base, quote) == (currency, home):
                paths.append([(symbol, "sell", currency, home)])
            elif (base, quote) == (home, currency):
                paths.append([(symbol, "buy", currency, home)])
        starts = [i for i, leg in enumerate(cycle) if leg[2] == currency]
        if starts:
            rest = [tuple(leg) for leg in cycle[starts[0] :]]
            if rest not in paths:
                paths.append(rest)  # type: ignore[arg-type]
        usable = [path for path in paths if not any(leg[0] in avoid for leg in path)]
        paths = usable or paths
        if not paths:
            return None
        symbols = sorted({leg[0] for path in paths for leg in path})
        books = self._books(symbols)
        best, best_value = None, -1.0
        for path in paths:
            value = amount
            for symbol, side, source, target in path:
                leg = Leg(symbol, side, source, target, self.fees[symbol])  # type: ignore[arg-type]
                value = leg_receives(leg, books[symbol], value)
            if value > best_value:
                best, best_value = path[0], value
        return best

    def _send_exit(
        self, oid: str, seq: int, exit_leg: tuple[str, str, str, str], have: float
    ) -> bool:
        symbol, side, source, target = exit_leg
        rules = self.rules[symbol]
        if side == "sell":
            amount = rules.round_amount(have)
        else:
            book = self._books([symbol])[symbol]
            at_market = Leg(symbol, "buy", source, target, 0.0)  # base before the fee
            amount = rules.round_amount(leg_receives(at_market, book, have) * (1 - 1e-6))
        row = {
            "client_order_id": leg_client_id(oid, seq),
            "opportunity_id": oid,
            "seq": seq,
            "kind": "unwind",
            "symbol": symbol,
            "side": side,
            "type": "market",
            "source": source,
            "target": target,
            "amount": amount,
            "price": None,
        }
        store.add_leg(self.engine, row, fence=self._fence())
        log.info("cycle %s: unwind %s %s %s", oid[:12], side, amount, symbol)
        execution = self.broker.execute(symbol, side, amount, row["client_order_id"], self._now())
        if execution.status == "pending":
            self.reconciled = False
            return False
        self._settle(row, execution)
        return execution.filled > 0 or execution.status == "filled"

    def _record_outcome(
        self, oid: str, legs: list[dict[str, Any]], stuck: str | None = None
    ) -> None:
        home = self.config.home
        start = sum(leg["spent"] for leg in legs if leg["source"] == home)
        end = sum(leg["received"] for leg in legs if leg["target"] == home)
        failed = any(leg["kind"] == "unwind" for leg in legs) or any(
            leg["kind"] in ("cycle", dust.SWEEP) and leg["status"] != "filled" for leg in legs
        )
        values: dict[str, Any] = {
            "status": "unwound" if failed else "done",
            "latency_ms": None if (lat := self.latency.pop(oid, None)) is None else lat * 1000,
            "realized_start": start,
            "realized_end": end,
            "realized_profit": end - start,
        }
        if stuck:
            values["reason"] = stuck
        store.finish_opportunity(self.engine, oid, **values)
        self.realized_total += end - start
        self.metrics.realized.set(self.realized_total)
        outcome = values["status"]
        if dust.is_sweep(legs):
            outcome = "sweep_failed" if failed else "swept"
        self.metrics.opportunities.labels(outcome).inc()
        now = self._now()
        hold = now + int(self.config.breaker_cooldown_seconds * 1000)
        self.dust.finished(legs, left_open=stuck is not None, failed=failed, hold_until=hold)
        self.risk.finished(end - start, failed, now)
        self._drain_risk()
        log.info(
            "cycle %s %s: %.6f %s in, %.6f back, profit %.6f",
            oid[:12],
            values["status"],
            start,
            home,
            end,
            end - start,
        )

    # -- plumbing ------------------------------------------------------------------------

    def _books(self, symbols: Any) -> dict[str, Any]:
        depth = self.config.book_depth
        client = self.exchange.client
        try:
            books = {
                symbol: self.exchange.call(
                    f"{symbol} order book",
                    lambda symbol=symbol: client.fetch_order_book(symbol, depth),
                    kind="depth",
                )
                for symbol in symbols
            }
        except CryptobotsError as error:
            self.metrics.exchange_errors.labels(self.venue).inc()
            self.last_error = str(error)
            raise
        self.last_error = None
        return books

    def _drain_risk(self) -> None:
        transitions = self.risk.drain_transitions()
        self.metrics.risk_state.set(RISK_CODES[str(self.risk.state)])
        if transitions:
            record_transitions(self.engine, self.account, transitions)

    def _now(self) -> int:
        return int(self.clock() * 1000)

    # -- what serving.http asks -----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What /readyz and the logs report."""
        reasons = []
        if not self.started:
            reasons.append("not started")
        if standby := self.role.reason():
            reasons.append(standby)
        if not self.reconciled:
            reasons.append("reconciling: an earlier cycle is still open")
        age = None if self.last_books_ms is None else (self._now() - self.last_books_ms) / 1000
        if age is None or age > max(30.0, 10 * self.config.poll_seconds):
            reasons.append("no fresh order books")
        if self.last_error:
            reasons.append(f"exchange: {self.last_error}")
        return {
            "ready": not reasons,
            "reasons": reasons,
            "strategy": "arbitrage",
            "account": self.account,
            "role": self.role.name,
            "exchange": self.venue,
            "markets": list(self.markets),
            "books_age_seconds": age,
            "realized_profit": self.realized_total,
            "dust": self.dust.snapshot(),
            "risk": self.risk.snapshot(self._now()),
            "lease": self.role.describe(),
        }

    def pause(self) -> None:
        """Operator pause: no new cycle starts (open ones are still closed)."""
        with self.lock:
            self.risk.pause(self._now())
            self._drain_risk()

    def resume(self) -> None:
        """Operator resume."""
        with self.lock:
            self.risk.resume(self._now())
            self._drain_risk()

    def flatten(self) -> None:
        """Close every open exposure now (cycles are closed as they go; this re-checks)."""
        with self.lock:
            self.reconcile()

    def run(self, stop: threading.Event) -> None:
        """Step until `stop` is set; the current step (and its cycle) always finishes.
        The lease, when there is one, is renewed meanwhile and handed back at the end."""
        if self.lease is not None:
            Renewer(self.lease, stop).start()
        try:
            while not stop.is_set():
                try:
                    self.step()
                    self.metrics.db_up.set(1)
                except DB_ERRORS as error:
                    self.metrics.db_up.set(0)
                    self.reconciled = False
                    log.error("database unavailable: %s", str(error).splitlines()[0][:300])
                except CryptobotsError as error:
                    log.warning("step skipped: %s", error)
                except Exception:  # a daemon logs what it did not foresee and goes on
                    log.exception("step failed, going on")
                stop.wait(self.config.poll_seconds)
        finally:
            if self.lease is not None:
                try:
                    self.lease.release()  # a standby takes over now, not a lease later
                except DB_ERRORS as error:
                    log.error("lease not released, the database is down: %s", error)


def _path(cycle: Cycle) -> str:
    return " -> ".join(cycle.currencies)


def _book_mark(cycle: Cycle, books: Mapping[str, Any]) -> tuple[Any, ...]:
    """The cycle and every level of its markets' books: equal marks are the same edge."""
    return tuple(
        (
            leg.symbol,
            leg.side,
            tuple(tuple(level[:2]) for level in books[leg.symbol].get("bids") or ()),
            tuple(tuple(level[:2]) for level in books[leg.symbol].get("asks") or ()),
        )
        for leg in cycle.legs
    )
