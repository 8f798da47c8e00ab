"""Kafka plumbing: the event producer, the consumer runner and topic administration."""

from .admin import ensure_topics
from .consumer import (
    DLQ_ATTEMPTS,
    DLQ_ERROR,
    DLQ_ORIGINAL_OFFSET,
    DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_TOPIC,
    BatchHandler,
    BatchItem,
    ConsumerRunner,
    Handler,
    InboundMessage,
)
from .producer import BrokerUnavailable, EventProducer, PublishRejected

__all__ = [
    "DLQ_ATTEMPTS",
    "DLQ_ERROR",
    "DLQ_ORIGINAL_OFFSET",
    "DLQ_ORIGINAL_PARTITION",
    "DLQ_ORIGINAL_TOPIC",
    "BatchHandler",
    "BatchItem",
    "BrokerUnavailable",
    "ConsumerRunner",
    "EventProducer",
    "Handler",
    "InboundMessage",
    "PublishRejected",
    "ensure_topics",
]
