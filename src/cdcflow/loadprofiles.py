"""The load generator's profiles (``cdcflow loadgen --profile``): the shape of a load,
rate, duration, the changes that come with each order, bursts; run by ``cdcflow.loadgen``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cdcflow.errors import ConfigError


@dataclass(frozen=True)
class Profile:
    """A load shape. Ratios are per order (0.45 = 45 updates per 100 orders)."""

    name: str
    rate: float  # orders per second (base); 0 = as fast as possible
    duration: float  # seconds
    update_ratio: float = 0.0
    payment_ratio: float = 0.0
    delete_ratio: float = 0.0
    new_customer_ratio: float = 0.0
    segment_change_ratio: float = 0.0
    burst_every: float = 0.0  # seconds between burst starts; 0 = no bursts
    burst_seconds: float = 0.0
    burst_multiplier: float = 1.0
    connections: int = 1

    def validate(self) -> None:
        checks = [
            ("rate", self.rate >= 0, "a number >= 0 (0 = as fast as possible)"),
            ("duration", self.duration > 0, "a number of seconds > 0"),
            ("connections", 1 <= self.connections <= 32, "a whole number from 1 to 32"),
            ("burst_multiplier", self.burst_multiplier >= 1, "a number >= 1"),
            ("burst_seconds", 0 <= self.burst_seconds <= max(self.burst_every, 0), "0 .. burst_every seconds"),
        ]
        for name in ("update_ratio", "payment_ratio", "delete_ratio", "new_customer_ratio", "segment_change_ratio"):
            checks.append((name, 0 <= getattr(self, name) <= 10, "a ratio from 0 to 10"))
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(
                    f"loadgen profile {self.name}: {name}={getattr(self, name)!r} is not valid: expected {expected}"
                )

    @property
    def changes_per_order(self) -> float:
        return (
            1
            + self.update_ratio
            + self.payment_ratio
            + self.delete_ratio
            + self.new_customer_ratio
            + self.segment_change_ratio
        )

    def orders_due(self, t: float) -> float:
        """Orders that should exist ``t`` seconds into the run (base rate plus bursts)."""
        if self.burst_every <= 0 or self.burst_multiplier == 1:
            return self.rate * t
        cycles, within = divmod(t, self.burst_every)
        burst_time = cycles * self.burst_seconds + min(within, self.burst_seconds)
        return self.rate * (t + (self.burst_multiplier - 1) * burst_time)

    def replace(self, **changes: object) -> Profile:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "smoke",
            rate=50,
            duration=10,
            update_ratio=0.5,
            payment_ratio=0.8,
            delete_ratio=0.05,
            new_customer_ratio=0.05,
            segment_change_ratio=0.05,
        ),
        Profile(
            "moderate",
            rate=500,
            duration=60,
            update_ratio=0.45,
            payment_ratio=0.8,
            delete_ratio=0.02,
            new_customer_ratio=0.01,
            segment_change_ratio=0.01,
            burst_every=20,
            burst_seconds=3,
            burst_multiplier=3,
        ),
        # The seed's heavy profile: 10,000 orders/s base, 45 updates and 80 payments per 100 orders.
        Profile("heavy_10k", rate=10_000, duration=180, update_ratio=0.45, payment_ratio=0.80, connections=2),
        Profile(
            "flat_out",
            rate=0,
            duration=30,
            update_ratio=0.45,
            payment_ratio=0.80,
            delete_ratio=0.02,
            new_customer_ratio=0.01,
            segment_change_ratio=0.01,
            connections=2,
        ),
    )
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"loadgen profile {name!r} is not valid: expected one of {', '.join(PROFILES)}") from None
