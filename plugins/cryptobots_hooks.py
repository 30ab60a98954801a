"""Airflow hook for exchanges: credentials come from the `exchange_<name>` Connection.

Thin and stateless: it only turns a Connection into credentials; everything else
lives in pipeline/. A missing Connection means no keys (public market data). Beside it,
`final_refusals`: the errors asking again cannot fix fail a task without its retries.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowFailException

from pipeline.errors import ConfigurationError, HistoryOutOfReach, ModelRejected
from pipeline.exchanges.factory import Credentials


@contextmanager
def final_refusals() -> Iterator[None]:
    """Fail the task at once, without its retries, on an error another try would meet
    again (history beyond the exchange's reach, a bad setting, a refused model), its
    message unchanged."""
    try:
        yield
    except (HistoryOutOfReach, ConfigurationError, ModelRejected) as error:
        raise AirflowFailException(str(error)) from error


class ExchangeHook(BaseHook):
    """Credentials of one exchange, from the Airflow Connection `exchange_<name>`.

    Connection login = API key, password = secret (Connection type `generic`).
    """

    conn_name_attr = "exchange_conn_id"
    default_conn_name = "exchange_binance"
    conn_type = "generic"
    hook_name = "cryptobots exchange"

    def __init__(self, exchange: str) -> None:
        super().__init__()
        self.exchange = exchange
        self.exchange_conn_id = f"exchange_{exchange}"

    def get_credentials(self) -> Credentials | None:
        """The API keys, or None when no Connection (or no key) is set."""
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            connection = self.get_connection(self.exchange_conn_id)
        except AirflowNotFoundException:
            return None
        if not connection.login or not connection.password:
            return None
        return Credentials(connection.login, connection.password)
