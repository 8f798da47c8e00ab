"""lmforge.common: the shared contract and plumbing every lmforge service builds on.

Each mechanism lives here once: settings, the event envelope and payloads, the Kafka producer
and consumer runner, inbox/outbox, database and artifact helpers, telemetry and health.
"""
