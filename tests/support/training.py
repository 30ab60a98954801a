"""Training requests on a fixed BTC window, as the train-stage tests build them."""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.learn.train_request import TrainRequest
from pipeline.learn.windows import Window
from pipeline.settings import Market

BTC = Market.model_validate("binance:BTC/USDT:1h")


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


TRAIN = Window(ms("2019-10-01"), ms("2019-12-01"))
VALID = Window(ms("2019-12-01"), ms("2020-01-01"))


def request(algorithm: str, **changes: object) -> TrainRequest:
    options = {"steps": 4_000, "num_envs": 8, "episode_length": 48, "seed": 1}
    if algorithm == "a2c":
        options |= {"steps": 40_000, "num_envs": 64}
    return TrainRequest(algorithm, BTC, TRAIN, VALID, **{**options, **changes})
