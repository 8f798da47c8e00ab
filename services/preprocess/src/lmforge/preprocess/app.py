from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from lmforge.common.events import Topic
from lmforge.common.http import create_app
from lmforge.common.service import ServiceRuntime

from . import api
from .handlers import RawRecordHandler
from .models import outbox
from .near_dup import NearDuplicateIndex, mark_index_stale
from .recipe import Recipe, RecipeError, default_recipe, load_recipe
from .settings import PreprocessSettings
from .store import DatasetStore

MIGRATIONS = Path(__file__).parent / "migrations"


def build_app(settings: PreprocessSettings | None = None) -> FastAPI:
    settings = settings or PreprocessSettings()
    recipe = load_recipe(settings.recipe) if settings.recipe else default_recipe()  # a bad one stops here
    key = settings.pii.pseudonym_key
    pipeline = recipe.pipeline(pseudonym_key=key.get_secret_value() if key else None)
    near_dups = near_duplicate_index(settings, recipe)
    runtime = ServiceRuntime(
        settings, migrations=MIGRATIONS, outbox=outbox, produces=[Topic.CLEANED_DATA, Topic.DATASET_EVENTS]
    )
    assert runtime.relay is not None
    datasets = DatasetStore(runtime.db, runtime.artifacts, runtime.relay, near_dups, recipe)
    if near_dups is not None:  # rows written under another threshold are rebuilt before any record is read
        runtime.prepare(lambda: near_dups.ensure_index(runtime.db))
    else:  # records kept from now on have no band rows: a later start with the index rebuilds it
        runtime.prepare(lambda: mark_index_stale(runtime.db))
    handler = RawRecordHandler(runtime.db, settings.consumer_group, runtime.relay, pipeline, near_dups, datasets)
    runtime.consume(settings.consumer_group, [Topic.RAW_DATA], handler, batch_handler=handler.handle_batch)
    app = create_app("preprocess", lifespan=runtime.lifespan, readiness=runtime.readiness(), internal=settings.internal)
    app.state.settings, app.state.runtime = settings, runtime
    app.state.datasets = datasets
    app.include_router(api.router)
    return app


def near_duplicate_index(settings: PreprocessSettings, recipe: Recipe) -> NearDuplicateIndex | None:
    """The index at the recipe's threshold; None when the recipe has no ``near_dup`` step or the
    setting turns it off. A threshold setting that disagrees with the recipe stops the service."""
    threshold = recipe.near_dup_threshold
    configured = settings.near_dup.threshold
    if "threshold" in settings.near_dup.model_fields_set and configured != threshold:
        raise RecipeError(
            f"LMFORGE_PREPROCESS_NEAR_DUP__THRESHOLD is {configured}, but recipe {recipe.name} v{recipe.version} "
            f"sets near_dup threshold {threshold}: set the threshold in the recipe"
        )
    if threshold is None or not settings.near_dup.enabled:
        return None
    return NearDuplicateIndex(threshold)
