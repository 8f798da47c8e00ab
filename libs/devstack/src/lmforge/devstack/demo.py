"""The scripted demo: records in, a served answer out, through the public API only.

1. generate a synthetic support-ticket corpus (duplicates, HTML noise, emails, phone numbers);
2. send it through the gateway; 3. cut a dataset version; 4. request training;
5. wait for registration, promotion and deployment; 6. ask a question; 7. show the answer, the
model version, its lineage and the trace ids to look up.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

TOPICS = [
    (
        ["How do I reset my password?", "I forgot my password.", "My password does not work anymore."],
        "Open Settings, choose Reset password and follow the link we email you.",
    ),
    (
        ["Where is my refund?", "When will I get my money back?", "I returned an item, where is the refund?"],
        "Refunds go back to your original payment method within five business days.",
    ),
    (
        ["Where is my order?", "My package has not arrived.", "How long does shipping take?"],
        "Orders ship within two days and the tracking number is sent by email.",
    ),
    (
        ["Where can I find my invoice?", "I need a copy of my invoice.", "How do I download an invoice?"],
        "Invoices are under Billing, then Invoices, in your account.",
    ),
    (
        ["How do I cancel my plan?", "I want to cancel my subscription.", "Please stop my subscription."],
        "Cancel any time from Account, then Subscription, then Cancel plan.",
    ),
]
NAMES = ["ann", "bob", "chen", "dana", "eli", "fay", "gus", "hana"]
QUESTION = "Customer: How do I reset my password? Agent:"


def make_corpus(n: int = 200, seed: int = 7) -> list[dict[str, Any]]:
    """Support tickets from a CRM: ~10% exact duplicates, some HTML, some emails and phone numbers."""
    rnd = random.Random(seed)
    records: list[dict[str, Any]] = []
    for i in range(n):
        if records and rnd.random() < 0.1:  # the same ticket filed twice under another id
            dup = dict(rnd.choice(records))
            dup["source_id"] = f"T-{10000 + i}"
            records.append(dup)
            continue
        questions, answer = rnd.choice(TOPICS)
        question = rnd.choice(questions)
        name = rnd.choice(NAMES)
        contact = rnd.choice(
            [
                "",
                "",
                f" My email is {name}.{i}@example.com.",
                f" Call me at +1 555-{rnd.randint(100, 999)}-{rnd.randint(1000, 9999)}.",
            ]
        )
        order = f" Order {rnd.randint(10000, 99999)}." if rnd.random() < 0.6 else ""
        text = f"Customer: {question}{order}{contact} Agent: {answer}"
        if rnd.random() < 0.3:
            text = f"<div><p>{text.replace(' Agent:', '</p><p>Agent:')}</p></div>"
        records.append(
            {
                "source": "crm",
                "source_id": f"T-{10000 + i}",
                "text": text,
                "metadata": {"channel": rnd.choice(["email", "chat", "phone"])},
                "label": "support",
            }
        )
    return records


@dataclass
class DemoResult:
    answer: str
    model: str
    version: int
    lineage: dict[str, Any]
    trace_ids: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)


def wait_for(
    what: str, check: Callable[[], Any], timeout: float, say: Callable[[str], None], interval: float = 0.5
) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
        last = what
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {last}")


def run_demo(
    gateway_url: str,
    api_key: str,
    *,
    say: Callable[[str], None] = print,
    records: int = 200,
    model_name: str = "support-assistant",
    max_steps: int = 300,
) -> DemoResult:
    h = {"Authorization": f"Bearer {api_key}"}
    traces: dict[str, str] = {}
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    with httpx.Client(base_url=gateway_url, headers=h, timeout=60) as api:
        corpus = make_corpus(records)
        say(f"1. generated {len(corpus)} support tickets (duplicates, HTML, emails, phone numbers)")
        bad = api.post("/v1/records", json={"source": "crm", "text": "no id"})
        say(f"   a malformed record is refused: {bad.status_code} {bad.json()['error']['message']}")
        resp = api.post("/v1/records", json=corpus)
        resp.raise_for_status()
        body = resp.json()
        traces["ingest"] = resp.headers.get("x-trace-id", "")
        say(f"2. sent through the gateway: {body['accepted']} accepted, {body['duplicates']} identical resubmissions")

        def preprocessed() -> Any:
            stats = api.get("/v1/pipeline/stats").json()
            done = stats["cleaned"] + sum(stats["dropped"].values())
            return stats if done >= body["accepted"] else None

        stats = wait_for("preprocessing", preprocessed, 120, say)
        say(f"   preprocess: {stats['cleaned']} cleaned, dropped {stats['dropped']}")
        resp = api.post("/v1/datasets/support-tickets/versions", json={})
        resp.raise_for_status()
        dataset = resp.json()
        traces["dataset"] = resp.headers.get("x-trace-id", "")
        say(
            f"3. dataset version support-tickets v{dataset['version']}: {dataset['record_count']} records, "
            f"splits {dataset['split_counts']}"
        )
        manifest = api.get(f"/v1/datasets/support-tickets/versions/{dataset['version']}").json()
        say(f"   masked: {manifest['masked']}; records by sensitivity: {manifest['sensitivity']}")
        resp = api.post(
            "/v1/training-jobs",
            json={
                "model_name": model_name,
                "dataset": "support-tickets",
                "dataset_version": dataset["version"],
                "hyperparameters": {
                    "max_steps": max_steps,
                    "eval_every": 50,
                    "batch_size": 16,
                    "max_seq_len": 64,
                    "learning_rate": 0.003,
                    "early_stopping_patience": 3,
                },
            },
        )
        resp.raise_for_status()
        job = resp.json()
        traces["training"] = resp.headers.get("x-trace-id", "")
        timings["records_to_training_request_s"] = time.monotonic() - t0
        say(f"4. training requested: {job['job_id']}")

        seen: dict[str, Any] = {}

        def trained() -> Any:
            r = api.get(f"/v1/training-jobs/{job['job_id']}")
            if r.status_code == 404:
                return None
            j = r.json()
            if (j["state"], j["step"]) != (seen.get("state"), seen.get("step")):
                say(f"   job {j['state']} step {j['step']}")
                seen.update(state=j["state"], step=j["step"])
            if j["state"] == "failed":
                raise RuntimeError(f"training failed: {j['error']}")
            return j if j["state"] == "succeeded" else None

        done_job = wait_for("training", trained, 300, say)
        say(
            f"   trained: val perplexity {done_job['metrics']['val_perplexity']:.2f} "
            f"in {done_job['metrics']['steps']:.0f} steps"
        )

        def promoted() -> Any:
            models = {m["name"]: m for m in api.get("/v1/registry/models").json()}
            m = models.get(model_name)
            return m if m and "production" in m["aliases"] else None

        model = wait_for("registration and promotion", promoted, 60, say)
        version = model["aliases"]["production"]
        say(f"5. registered {model_name} v{version} and promoted it to production; deploying to Triton...")

        answer: dict[str, Any] = {}

        def served() -> Any:
            r = api.post("/v1/completions", json={"model": model_name, "prompt": QUESTION, "max_tokens": 20})
            if r.status_code == 503 or (r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"):
                return None  # the alias event has not reached inference, or Triton is still loading
            r.raise_for_status()
            answer.update(r.json())
            traces["completion"] = r.headers.get("x-trace-id", "")
            return True

        wait_for("deployment", served, 180, say, interval=1.0)
        timings["first_record_to_first_answer_s"] = time.monotonic() - t0
        text = answer["choices"][0]["text"].strip()
        say(f"6. asked: {QUESTION!r}")
        say(f"7. answer: {text!r}")
        say(f"   served by {answer['model']} (triton model {answer['lmforge']['triton_model']})")
        lineage = api.get(f"/v1/models/{model_name}/versions/{answer['lmforge']['version']}/lineage").json()
        ds = lineage["dataset"]
        say(
            f"   lineage: run {lineage['run_id']} <- dataset {ds['name']} v{ds['version']} "
            f"({len(ds['record_ids'])} record ids, config {ds['config_hash']}) <- base {lineage['base_model']}"
        )
        say("   trace ids to look up in Grafana (Tempo): " + ", ".join(f"{k}={v}" for k, v in traces.items()))
        say(f"   first record in -> first answer out: {timings['first_record_to_first_answer_s']:.1f}s")
    return DemoResult(
        answer=text,
        model=model_name,
        version=answer["lmforge"]["version"],
        lineage=lineage,
        trace_ids=traces,
        timings=timings,
    )
