"""Getting hold of a Kafka broker: an existing cluster, a container, or our own jars."""

from tripwire.broker.local import KAFKA_VERSION, BrokerInfo, BrokerStatus, LocalBroker
from tripwire.broker.select import KafkaCluster, acquire_cluster, choose_source

__all__ = [
    "KAFKA_VERSION",
    "BrokerInfo",
    "BrokerStatus",
    "KafkaCluster",
    "LocalBroker",
    "acquire_cluster",
    "choose_source",
]
