"""The serving service's Prometheus metrics (``/metrics``), all labelled by Triton model
(``<name>-v<version>``: one model version).

- Time to first token (streamed requests only: an unstreamed answer has one response), tokens
  per second (completion tokens over the whole generation's seconds) and the batch size a
  request was generated in (the largest ``BATCH_SIZE`` among its responses), observed by the
  Triton client when a generation finishes.
- Response cache hits and misses (only requests the cache may answer count).
- Triton's own cumulative counters per loaded model (queue time, requests, executions,
  inferences, executions per batch size), read periodically from its statistics API and exposed
  as counters by a collector.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .triton import ModelStatistics

MODEL = ("model",)

time_to_first_token = Histogram(
    "lmforge_inference_time_to_first_token_seconds",
    "Seconds from sending a streamed request to Triton to its first response.",
    MODEL,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
tokens_per_second = Histogram(
    "lmforge_inference_tokens_per_second",
    "Completion tokens of a generation over its seconds (request sent to last response).",
    MODEL,
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)
batch_sizes = Histogram(
    "lmforge_inference_batch_size",
    "How many requests the model generated together with this one (largest BATCH_SIZE of its responses).",
    MODEL,
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
)
cache_hits = Counter("lmforge_inference_cache_hits_total", "Requests answered from the response cache.", MODEL)
cache_misses = Counter(
    "lmforge_inference_cache_misses_total", "Cacheable (temperature 0) requests the cache could not answer.", MODEL
)


def observe_generation(
    model: str, *, stream: bool, first_token_s: float, seconds: float, completion_tokens: int, batch_size: int
) -> None:
    if stream:
        time_to_first_token.labels(model).observe(first_token_s)
    if completion_tokens > 0 and seconds > 0:
        tokens_per_second.labels(model).observe(completion_tokens / seconds)
    if batch_size > 0:
        batch_sizes.labels(model).observe(batch_size)


class TritonStatistics(Collector):
    """The last statistics read from Triton, exposed as counters (they are cumulative in Triton;
    a reloaded model starts again from zero, which Prometheus reads as a counter reset)."""

    def __init__(self) -> None:
        self._models: Sequence[ModelStatistics] = ()

    def update(self, models: Iterable[ModelStatistics]) -> None:
        self._models = tuple(models)

    def collect(self) -> Iterator[Metric]:
        queue = CounterMetricFamily(
            "lmforge_inference_triton_queue_seconds",
            "Seconds requests waited in Triton's queue (scheduler) before execution, per model.",
            labels=MODEL,
        )
        requests = CounterMetricFamily(
            "lmforge_inference_triton_requests", "Requests Triton completed successfully, per model.", labels=MODEL
        )
        executions = CounterMetricFamily(
            "lmforge_inference_triton_executions",
            "Model executions (batches) Triton ran, per model; inferences / executions is the mean batch size.",
            labels=MODEL,
        )
        inferences = CounterMetricFamily(
            "lmforge_inference_triton_inferences", "Requests Triton executed, batched or not, per model.", labels=MODEL
        )
        batches = CounterMetricFamily(
            "lmforge_inference_triton_batch_executions",
            "Model executions Triton ran per batch size (the batches its dynamic batcher formed), per model.",
            labels=(*MODEL, "batch_size"),
        )
        for m in self._models:
            queue.add_metric([m.name], m.queue_ns / 1e9)
            requests.add_metric([m.name], m.success_count)
            executions.add_metric([m.name], m.execution_count)
            inferences.add_metric([m.name], m.inference_count)
            for size, count in sorted(m.batches.items()):
                batches.add_metric([m.name, str(size)], count)
        yield from (queue, requests, executions, inferences, batches)

    def describe(self) -> Iterator[Metric]:
        return iter(())


triton_statistics = TritonStatistics()
REGISTRY.register(triton_statistics)
