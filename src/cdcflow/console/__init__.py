"""The web console: one read-only page of captures, projections, charts and rows.

Served by the ``/metrics`` listener (:mod:`cdcflow.health`) at ``/``; it updates through
one server-sent-events stream per viewer (``/events``). What it shows comes from two
places, so that its cost does not grow with the number of viewers:

- :class:`~cdcflow.console.feed.History`: the last 15 minutes of changes/s staged, lag
  and freshness, one point a second, taken from the metrics sampler's memory (no query
  of its own), kept whether anyone watches or not;
- :class:`~cdcflow.console.feed.Feed`: while at least one viewer is connected, one thread
  collects ``cdcflow status`` (:func:`cdcflow.status.collect`, on connections it keeps)
  and the newest rows of the projections viewers chose, about once a second, and every
  viewer's stream sends that same serialized message.

Everything sent is passed through the redactor first. Bound to anything but a loopback
address, the console needs ``CONSOLE_TOKEN`` (:func:`require_token_if_exposed`).
"""

from __future__ import annotations

import ipaddress
import threading
from typing import TYPE_CHECKING

from cdcflow.config import Settings
from cdcflow.errors import ConfigError

if TYPE_CHECKING:
    from cdcflow.metrics import Sampler


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def served(settings: Settings) -> bool:
    return bool(settings.metrics_port) and settings.console_enabled


def require_token_if_exposed(settings: Settings) -> None:
    """A console bound beyond this machine without a token: one line saying what to set."""
    if served(settings) and not settings.console_token and not is_loopback(settings.metrics_address):
        raise ConfigError(
            f"METRICS_ADDRESS={settings.metrics_address} would serve the web console to the network without a token:"
            " set CONSOLE_TOKEN (16+ characters, e.g. from 'openssl rand -hex 24'; viewers open /?token=...),"
            " or CONSOLE_ENABLED=false to serve /metrics and /healthz alone"
        )


class Console:
    """The console of one runtime: its history (fed by the metrics sampler) and its feed."""

    def __init__(self, settings: Settings, sampler: Sampler, stop: threading.Event) -> None:
        from cdcflow.console.feed import Feed, History

        self.history = History(sampler)
        self.feed = Feed(settings, self.history, stop)

    def thread(self) -> threading.Thread:
        return threading.Thread(target=self.feed.run, name=self.feed.name, daemon=True)
