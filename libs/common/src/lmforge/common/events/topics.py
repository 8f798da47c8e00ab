"""Every Kafka topic name lmforge uses, in one place."""

from __future__ import annotations

from enum import StrEnum


class Topic(StrEnum):
    RAW_DATA = "raw-data"
    CLEANED_DATA = "cleaned-data"
    DATASET_EVENTS = "dataset-events"
    TRAINING_REQUESTS = "training-requests"
    TRAINING_EVENTS = "training-events"
    MODEL_READY = "model-ready"
    MODEL_EVENTS = "model-events"
    DEPLOYMENT_EVENTS = "deployment-events"


DLQ_SUFFIX = ".dlq"


def dead_letter_topic(topic: str) -> str:
    """The dead-letter topic for ``topic``: ``<topic>.dlq``."""
    return f"{topic}{DLQ_SUFFIX}"
