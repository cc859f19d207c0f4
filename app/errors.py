"""Exception classes shared across tripwire."""

__all__ = ["BrokerError", "ConfigError", "TripwireError"]


class TripwireError(Exception):
    """Base class of every error tripwire raises on purpose."""


class ConfigError(TripwireError):
    """The configuration is missing or inconsistent."""


class BrokerError(TripwireError):
    """The Kafka broker could not be started, reached or stopped."""
