"""tripwire: a real-time fraud and financial-crime pipeline on Apache Kafka."""

__all__ = ["__version__"]

__version__ = "0.1.0"
