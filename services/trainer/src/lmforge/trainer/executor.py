"""The job executor: runs training jobs one at a time, each in its own process.

Jobs live in the database, and a replica claims one with a lease: a conditional update that
succeeds for one replica only (the job is queued, or running under a lease that ran out). The
running replica renews the lease while its training process runs; if it dies (``kill -9``, a lost
node), the lease runs out and the job is claimed again, by any replica, and the run resumes from
its last checkpoint in the artifact store. A replica that restarts under the same ``replica_id``
takes its own running jobs back at once. Two replicas never run the same job: a replica that finds
its lease gone (taken over after a stall, or the job cancelled) stops its process and writes
nothing more for the job.

A job that fails for any reason (a bad manifest URI, a crashed training process, a timeout) is
marked failed and reported; the executor goes on with the next job.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.trace import Link
from sqlalchemy import CursorResult, and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import (
    EvaluationSummary,
    Hyperparameters,
    JobState,
    ModelReadyV1,
    SearchSpec,
    Topic,
    TrainingStatusV1,
)
from lmforge.common.http import internal_headers
from lmforge.common.names import url_path
from lmforge.common.redaction import describe_error
from lmforge.common.telemetry import extract_context, get_logger, tracer

from . import search
from .bases import REGISTERED
from .models import outbox, training_jobs, training_metrics
from .protocol import REFUSED_EXIT_CODE
from .settings import TrainerSettings

log = get_logger(__name__)


def _link_to(traceparent: str | None) -> list[Link]:
    """A span link to the trace that cut the dataset version: the fan-in of data into training."""
    if not traceparent:
        return []
    ctx = trace.get_current_span(extract_context([("traceparent", traceparent.encode())])).get_span_context()
    return [Link(ctx, {"lmforge.link": "dataset_version"})] if ctx.is_valid else []


async def _announce_model(
    session: Any,
    job: Any,
    *,
    artifact_uri: str,
    manifest_uri: str,
    hyperparameters: Any,
    metrics: dict[str, float],
    evaluation: EvaluationSummary | None,
) -> None:
    """``model-ready`` for a finished job (or a search, with its best trial's model), in the
    transaction that records the job's success."""
    await outbox.add(
        session,
        Topic.MODEL_READY,
        ModelReadyV1(
            model_name=job.model_name,
            run_id=job.run_id,
            job_id=job.job_id,
            artifact_uri=artifact_uri,
            base_model=job.base_model,
            dataset=job.dataset,
            dataset_version=job.dataset_version,
            dataset_manifest_uri=manifest_uri,
            hyperparameters=Hyperparameters.model_validate(hyperparameters),
            metrics=metrics,
            evaluation=evaluation,
        ),
        key=job.model_name,
    )


class JobExecutor:
    def __init__(self, settings: TrainerSettings, db: Database, artifacts: ArtifactStore, relay: OutboxRelay) -> None:
        self.settings = settings
        self.db = db
        self.artifacts = artifacts
        self.relay = relay
        # Absolute: the training process runs in its job's own folder.
        self._work = Path(os.path.abspath(settings.work_dir))
        self._model_cache = os.path.abspath(settings.model_cache_dir)
        self._wake = asyncio.Event()
        self._current: tuple[str, asyncio.subprocess.Process] | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        await self._release_own_leases()
        while True:
            await self.advance_searches()
            job = await self.claim_next()
            if job is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval_s)
                continue
            await self._run_job(job)

    @property
    def owner(self) -> str:
        return self.settings.replica_id

    async def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job; returns its state after the call, None if unknown.

        A running job's replica notices at its next lease renewal and stops the process; this
        replica stops it at once when it is the one running it."""
        async with self.db.sessions.begin() as session:
            row = (await session.execute(select(training_jobs).where(training_jobs.c.job_id == job_id))).first()
            if row is None:
                return None
            if row.state not in (JobState.QUEUED, JobState.RUNNING):
                return str(row.state)
            await self._set(session, job_id, state=JobState.CANCELLED, lease_expires_at=None)
            await self._status(session, row, JobState.CANCELLED)
            # A search's trials go with it (a running one stops at its replica's next renewal).
            await session.execute(
                update(training_jobs)
                .where(
                    training_jobs.c.parent_job_id == job_id,
                    training_jobs.c.state.in_([JobState.QUEUED, JobState.RUNNING]),
                )
                .values(state=JobState.CANCELLED, updated_at=datetime.now(UTC))
            )
        self.relay.wake()
        if self._current and self._current[0] == job_id:
            with contextlib.suppress(ProcessLookupError):
                self._current[1].kill()
        return JobState.CANCELLED

    async def advance_searches(self) -> None:
        """Move each running hyperparameter search on: queue its next trial when none is in
        flight, or, once all have run, publish the best trial's model as the search's version.

        Idempotent and safe on several replicas: a trial's job id is derived from the search and
        its number (the second insert fails), and the search ends with a conditional update."""
        async with self.db.sessions() as session:
            searches = (
                await session.execute(
                    select(training_jobs).where(
                        training_jobs.c.search.is_not(None), training_jobs.c.state == JobState.RUNNING
                    )
                )
            ).all()
        for parent in searches:
            try:
                await self._advance_search(parent)
            except Exception as exc:  # noqa: BLE001 - one broken search never stops the worker
                log.error("search not advanced", job_id=parent.job_id, error=describe_error(exc))

    async def _advance_search(self, parent: Any) -> None:
        spec = SearchSpec.model_validate(parent.search)
        query = select(training_jobs).where(training_jobs.c.parent_job_id == parent.job_id)
        async with self.db.sessions() as session:
            trials: list[Any] = list((await session.execute(query.order_by(training_jobs.c.trial))).all())
        ended = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
        if any(t.state not in ended for t in trials):
            return  # one trial at a time: each sees the results of the ones before
        total = search.trial_count(spec)
        if len(trials) < total:
            await self._queue_trial(parent, spec, trials)
        else:
            await self._end_search(parent, spec, trials)

    async def _queue_trial(self, parent: Any, spec: SearchSpec, trials: list[Any]) -> None:
        number = len(trials)
        finished = [(dict(t.search or {}), search.score(t.metrics, spec)) for t in trials]
        parameters = search.next_parameters(spec, number, finished)
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "job_id": search.trial_job_id(parent.job_id, number),
            "run_id": f"run-{uuid.uuid4().hex[:12]}",
            "model_name": parent.model_name,
            "dataset": parent.dataset,
            "dataset_version": parent.dataset_version,
            "base_model": parent.base_model,
            "dataset_manifest_uri": parent.dataset_manifest_uri,
            "state": JobState.QUEUED,
            "step": 0,
            "metrics": {},
            "traceparent": parent.traceparent,
            "parent_job_id": parent.job_id,
            "trial": number,
            "search": parameters,  # a trial's "search" is the point it tries
            "created_at": now,
            "updated_at": now,
        }
        try:
            values["hyperparameters"] = search.apply(dict(parent.hyperparameters), parameters).model_dump(mode="json")
        except ValueError as exc:
            values |= {"state": JobState.FAILED, "error": f"parameters out of bounds: {exc}"[:1000]}
            values["hyperparameters"] = dict(parent.hyperparameters)
        try:
            async with self.db.sessions.begin() as session:
                await session.execute(training_jobs.insert().values(**values))
        except IntegrityError:
            return  # another replica queued this trial first
        log.info("search trial queued", job_id=parent.job_id, trial=number, parameters=parameters)

    async def _end_search(self, parent: Any, spec: SearchSpec, trials: list[Any]) -> None:
        winner = search.best(trials, spec)
        summary = {"search_trials": float(len(trials))}
        async with self.db.sessions.begin() as session:
            if winner is None:
                ended = await _rows(
                    session,
                    update(training_jobs)
                    .where(training_jobs.c.job_id == parent.job_id, training_jobs.c.state == JobState.RUNNING)
                    .values(state=JobState.FAILED, error=f"no trial scored {spec.metric}", metrics=summary),
                )
                if ended:
                    await self._status(session, parent, JobState.FAILED, error=f"no trial scored {spec.metric}")
                return
            metrics = {**{k: float(v) for k, v in winner.metrics.items()}, **summary}
            metrics["search_best_trial"] = float(winner.trial)
            ended = await _rows(
                session,
                update(training_jobs)
                .where(training_jobs.c.job_id == parent.job_id, training_jobs.c.state == JobState.RUNNING)
                .values(
                    state=JobState.SUCCEEDED,
                    metrics=metrics,
                    artifact_uri=winner.artifact_uri,
                    evaluation=winner.evaluation,
                    step=winner.step,
                    updated_at=datetime.now(UTC),
                ),
            )
            if not ended:
                return  # another replica ended it
            await self._status(session, parent, JobState.SUCCEEDED, metrics=metrics)
            await _announce_model(
                session,
                parent,
                artifact_uri=winner.artifact_uri,
                manifest_uri=parent.dataset_manifest_uri,
                hyperparameters=winner.hyperparameters,
                metrics=metrics,
                evaluation=EvaluationSummary.model_validate(winner.evaluation) if winner.evaluation else None,
            )
        self.relay.wake()
        log.info("search ended", job_id=parent.job_id, best_trial=winner.trial, metric=spec.metric)

    async def _release_own_leases(self) -> None:
        """At start-up no job of this replica is running here: its leases may be taken at once."""
        async with self.db.sessions.begin() as session:
            await session.execute(
                update(training_jobs)
                .where(training_jobs.c.state == JobState.RUNNING, training_jobs.c.lease_owner == self.owner)
                .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )

    def _lease_until(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.settings.lease_s)

    async def claim_next(self) -> Any | None:
        """Claim the oldest runnable job with a lease; None when there is none (or another replica won)."""
        now = datetime.now(UTC)
        runnable = or_(
            training_jobs.c.state == JobState.QUEUED,
            and_(training_jobs.c.state == JobState.RUNNING, training_jobs.c.lease_expires_at < now),
        )
        async with self.db.sessions() as session:
            candidates = (
                await session.execute(
                    select(training_jobs.c.job_id).where(runnable).order_by(training_jobs.c.created_at).limit(5)
                )
            ).all()
        for (job_id,) in candidates:
            async with self.db.sessions.begin() as session:
                claimed = await _rows(
                    session,
                    update(training_jobs)
                    .where(training_jobs.c.job_id == job_id, runnable)
                    .values(
                        state=JobState.RUNNING,
                        lease_owner=self.owner,
                        lease_expires_at=self._lease_until(),
                        attempts=training_jobs.c.attempts + 1,
                        updated_at=now,
                    ),
                )
                if claimed != 1:
                    continue  # another replica claimed it between the read and the update
                row = (await session.execute(select(training_jobs).where(training_jobs.c.job_id == job_id))).one()
            if row.attempts > self.settings.max_attempts:
                span = trace.get_current_span()
                await self._end_without_model(
                    row, span, RuntimeError(f"abandoned: its trainer died {row.attempts - 1} times while running it")
                )
                continue
            return row
        return None

    async def _renew_lease(self, job_id: str) -> bool:
        """Extend this replica's lease; False when it is gone (cancelled, or taken over)."""
        async with self.db.sessions.begin() as session:
            renewed = await _rows(
                session,
                update(training_jobs)
                .where(
                    training_jobs.c.job_id == job_id,
                    training_jobs.c.state == JobState.RUNNING,
                    training_jobs.c.lease_owner == self.owner,
                )
                .values(lease_expires_at=self._lease_until()),
            )
        return renewed == 1

    async def _heartbeat(self, job_id: str, proc: asyncio.subprocess.Process, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            if not await self._renew_lease(job_id):
                lost.set()
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                return

    @staticmethod
    async def _set(session: Any, job_id: str, **values: Any) -> None:
        await session.execute(
            update(training_jobs).where(training_jobs.c.job_id == job_id).values(updated_at=datetime.now(UTC), **values)
        )

    async def _finish(self, session: Any, job_id: str, **values: Any) -> bool:
        """End a job this replica holds; False (and nothing written) when its lease is gone."""
        ended = await _rows(
            session,
            update(training_jobs)
            .where(
                training_jobs.c.job_id == job_id,
                training_jobs.c.state == JobState.RUNNING,
                training_jobs.c.lease_owner == self.owner,
            )
            .values(updated_at=datetime.now(UTC), lease_expires_at=None, **values),
        )
        return ended == 1

    def _read_manifest(self, manifest_uri: str) -> dict[str, Any]:
        manifest = json.loads(self.artifacts.read_bytes(self.artifacts.key_of(manifest_uri)))
        if not isinstance(manifest, dict):
            raise ValueError("the dataset manifest is not a JSON object")
        return manifest

    async def _run_job(self, job: Any) -> None:
        hp = dict(job.hyperparameters)
        manifest_uri = job.dataset_manifest_uri
        manifest: dict[str, Any] = {}
        manifest_error: Exception | None = None
        try:
            manifest = await asyncio.to_thread(self._read_manifest, manifest_uri)
        except Exception as exc:  # noqa: BLE001 - an unreadable manifest fails this job, not the executor
            manifest_error = exc
        parent = extract_context([("traceparent", job.traceparent.encode())] if job.traceparent else [])
        with tracer().start_as_current_span(
            "training job",
            context=parent,
            links=_link_to(manifest.get("trace", {}).get("traceparent")),
            attributes={
                "lmforge.job_id": job.job_id,
                "lmforge.run_id": job.run_id,
                "lmforge.model": job.model_name,
                "lmforge.dataset": f"{job.dataset}@{job.dataset_version}",
            },
        ) as span:
            if manifest_error is not None:
                await self._end_without_model(
                    job,
                    span,
                    RuntimeError(f"dataset manifest unreadable: {type(manifest_error).__name__}: {manifest_error}"),
                )
                return
            async with self.db.sessions.begin() as session:
                await self._status(session, job, JobState.RUNNING)
            self.relay.wake()
            try:
                result = await self._train_in_subprocess(job, hp, manifest_uri)
            except LeaseLost as exc:
                log.warning("training job left to its new holder", job_id=job.job_id, reason=str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - a failed job is reported, never fatal to the worker
                await self._end_without_model(job, span, exc)
                return
            metrics = {k: float(v) for k, v in result["metrics"].items()}
            evaluation = EvaluationSummary.model_validate(result["evaluation"]) if result.get("evaluation") else None
            async with self.db.sessions.begin() as session:
                if not await self._finish(
                    session,
                    job.job_id,
                    state=JobState.SUCCEEDED,
                    metrics=metrics,
                    artifact_uri=result["artifact_uri"],
                    step=int(metrics["steps"]),
                    evaluation=evaluation.model_dump(mode="json") if evaluation else None,
                ):
                    log.warning("training job finished after its lease was gone", job_id=job.job_id)
                    return
                await self._status(session, job, JobState.SUCCEEDED, metrics=metrics)
                if job.parent_job_id is None:  # a search's trials are candidates: the search publishes its best
                    await _announce_model(
                        session,
                        job,
                        artifact_uri=result["artifact_uri"],
                        manifest_uri=manifest_uri,
                        hyperparameters=hp,
                        metrics=metrics,
                        evaluation=evaluation,
                    )
            self.relay.wake()
            log.info("training job succeeded", job_id=job.job_id, run_id=job.run_id, metrics=metrics)

    async def _progress(self, job_id: str, line: bytes) -> None:
        """A progress line of the run: the job's step, and a row of its metric history."""
        try:
            fields = json.loads(line)
        except ValueError:
            return  # a library's own print: not progress
        if not isinstance(fields, dict) or not isinstance(fields.get("step"), int):
            return
        step = fields["step"]
        async with self.db.sessions.begin() as session:
            if fields.get("event") == "checkpoint":
                await self._set(session, job_id, checkpoint_step=step)
                return
            if fields.get("event") == "resumed":
                # Steps after the checkpoint run again: their first logs leave the history.
                await session.execute(
                    delete(training_metrics).where(training_metrics.c.job_id == job_id, training_metrics.c.step > step)
                )
                await self._set(session, job_id, step=step)
                return
            values = {k: float(v) for k, v in fields.items() if k != "step" and isinstance(v, int | float)}
            now = datetime.now(UTC)
            await self._set(session, job_id, step=step)
            if values:
                await session.execute(
                    training_metrics.insert().values(job_id=job_id, step=fields["step"], metrics=values, at=now)
                )

    async def _end_without_model(self, job: Any, span: trace.Span, exc: Exception) -> None:
        """Mark a job failed (or cancelled) and report it; the executor goes on with the next job."""
        state = JobState.CANCELLED if isinstance(exc, JobCancelled) else JobState.FAILED
        # The job's error keeps the process's stderr tail for its owner (job status); logs and spans
        # get the exit code only, and the stderr as a fingerprint: a traceback can quote dataset text.
        if isinstance(exc, TrainingProcessFailed):
            summary, stderr = f"{type(exc).__name__}: training process exited with {exc.code}", exc.stderr_tail
        else:
            summary, stderr = describe_error(exc), None
        span.set_status(trace.StatusCode.ERROR, summary[:200])
        log.error("training job ended without a model", job_id=job.job_id, state=state, error=summary, stderr=stderr)
        async with self.db.sessions.begin() as session:
            if not await self._finish(session, job.job_id, state=state, error=str(exc)[-4000:]):
                return  # cancelled through the API (already recorded), or taken over by another replica
            await self._status(session, job, state, error=str(exc)[-1000:])
        self.relay.wake()

    async def _status(
        self,
        session: Any,
        job: Any,
        state: JobState,
        *,
        metrics: dict[str, float] | None = None,
        error: str | None = None,
    ) -> None:
        await outbox.add(
            session,
            Topic.TRAINING_EVENTS,
            TrainingStatusV1(
                job_id=job.job_id, model_name=job.model_name, state=state, metrics=metrics or {}, error=error
            ),
            key=job.job_id,
        )

    async def registry_version(self, model: str, ref: str) -> dict[str, Any] | None:
        """The registered version ``ref`` (an alias, or ``v<N>``) of ``model``: its number, artifact
        URI and evaluation; None when the model or the alias does not exist."""
        async with httpx.AsyncClient(
            base_url=self.settings.registry_url, headers=internal_headers("trainer", self.settings.internal), timeout=10
        ) as client:
            if ref.startswith("v") and ref[1:].isdigit():
                version: int | None = int(ref[1:])
            else:
                models = await client.get("/models")
                models.raise_for_status()
                found = {m["name"]: m for m in models.json()}.get(model)
                version = found["aliases"].get(ref) if found else None
            if version is None:
                return None
            answer = await client.get(url_path("models", model, "versions", str(version)))
            if answer.status_code == 404:
                return None
            answer.raise_for_status()
            return dict(answer.json())

    async def _registered_base(self, job: Any) -> dict[str, Any] | None:
        """For ``model:<name>@<alias>`` (or ``@v<N>``) bases: the version to start from."""
        match = REGISTERED.match(job.base_model)
        if match is None:
            return None
        try:
            found = await self.registry_version(match["name"], match["ref"])
        except Exception as exc:
            raise JobRefused(
                f"base model {job.base_model}: the registry did not answer ({describe_error(exc)})"
            ) from exc
        if found is None:
            raise JobRefused(f"base model {job.base_model}: no such registered version")
        return {"model": match["name"], "version": found["version"], "artifact_uri": found["artifact_uri"]}

    async def _baseline(self, job: Any) -> dict[str, Any] | None:
        """The version the gate will compare this job's model with, if there is one to measure."""
        alias = self.settings.baseline_alias
        if not alias:
            return None
        try:
            version = await self.registry_version(job.model_name, alias)
        except Exception as exc:  # noqa: BLE001 - without a baseline the gate uses stored evaluations
            log.warning("no baseline: the registry did not answer", job_id=job.job_id, error=describe_error(exc))
            return None
        if version is None:
            return None
        return {"alias": alias, "version": version["version"], "artifact_uri": version["artifact_uri"]}

    async def _train_in_subprocess(self, job: Any, hp: dict[str, Any], manifest_uri: str) -> dict[str, Any]:
        work = self._work
        work.mkdir(parents=True, exist_ok=True)
        baseline = await self._baseline(job)
        base_artifact = await self._registered_base(job)
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
            spec_path.write_text(
                json.dumps(
                    {
                        "hyperparameters": hp,
                        "base_model": job.base_model,
                        "dataset_manifest_uri": manifest_uri,
                        "artifacts_url": self.artifacts.url,
                        # May hold credentials: the spec lives in a private temp folder, never in a log.
                        "artifacts_storage_options": self.artifacts.storage_options,
                        "artifact_key": f"models/{job.model_name}/{job.run_id}",
                        "report_key": f"reports/{job.model_name}/{job.run_id}",
                        "model_name": job.model_name,
                        "run_id": job.run_id,
                        "job_id": job.job_id,
                        # Checkpoints of this run: a run claimed again resumes from the last one.
                        "checkpoint_prefix": f"checkpoints/{job.model_name}/{job.run_id}",
                        "baseline": baseline,
                        "base_artifact": base_artifact,
                        "model_cache_dir": self._model_cache,
                        "output_dir": str(Path(tmp) / "run"),
                    }
                )
            )
            launcher = ["-m", "lmforge.trainer.train"]
            if self.settings.processes_per_job > 1:
                launcher = [
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc_per_node={self.settings.processes_per_job}",
                    *launcher,
                ]
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",
                *launcher,
                str(spec_path),
                str(result_path),
                cwd=tmp,  # torchrun's workers put their working folder on sys.path: an empty one
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                preexec_fn=_die_with_parent,
            )
            self._current = (job.job_id, proc)
            lost = asyncio.Event()
            heartbeat = asyncio.create_task(self._heartbeat(job.job_id, proc, lost))
            try:
                stderr_task = asyncio.create_task(proc.stderr.read())  # type: ignore[union-attr]
                assert proc.stdout is not None
                async with asyncio.timeout(self.settings.job_timeout_s):
                    async for line in proc.stdout:
                        await self._progress(job.job_id, line)
                    code = await proc.wait()
                stderr = (await stderr_task).decode("utf-8", "replace")
            except TimeoutError:
                proc.kill()
                raise RuntimeError(f"training exceeded {self.settings.job_timeout_s:.0f}s") from None
            except asyncio.CancelledError:  # the trainer is shutting down: its run goes with it
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                raise
            finally:
                heartbeat.cancel()
                self._current = None
            if lost.is_set():
                raise LeaseLost("the job's lease is gone: cancelled, or claimed by another replica")
            if code < 0:
                raise JobCancelled(f"training process killed by signal {-code}")
            result: dict[str, Any] = {}
            if result_path.is_file():
                result = json.loads(await asyncio.to_thread(result_path.read_text))
            if code == REFUSED_EXIT_CODE and "error" in result:
                raise JobRefused(result["error"])
            if code != 0:
                raise TrainingProcessFailed(code, stderr.strip()[-1500:])
            return result


async def _rows(session: Any, statement: Any) -> int:
    """Run an UPDATE; how many rows it changed (a conditional update's verdict)."""
    result = await session.execute(statement)
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def _die_with_parent() -> None:
    """In the training process, before exec: the kernel kills it when the trainer dies (even by
    SIGKILL), so a crashed trainer leaves no run behind to race the resumed one."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class JobCancelled(RuntimeError):
    pass


class LeaseLost(RuntimeError):
    """This replica no longer holds the job: it writes nothing more for it."""


class JobRefused(ValueError):
    """The run refused the job before training (its data, base model or settings): the reason is its error."""


class TrainingProcessFailed(RuntimeError):
    """The training process exited non-zero; ``stderr_tail`` may quote dataset text."""

    def __init__(self, code: int, stderr_tail: str) -> None:
        super().__init__(f"training process exited with {code}: {stderr_tail}")
        self.code = code
        self.stderr_tail = stderr_tail
