from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr

from lmforge.common.settings import DatabaseSettings, HttpSettings, ServiceSettings, service_config


class PiiSettings(BaseModel):
    """PII masking (docs/curation.md, "PII").

    ``pseudonym_key`` keys the HMAC behind consistent pseudonyms (``[PHONE_3f9a1c2d]``): at least
    32 characters (`openssl rand -hex 32`), the same for every replica, and kept secret, since
    anyone holding it can test a guessed phone number against a token. Only masking modes that
    use pseudonyms need it; the default modes are typed placeholders.
    """

    pseudonym_key: SecretStr | None = None


class NearDupSettings(BaseModel):
    """Near-duplicate detection (docs/curation.md, "Near-duplicates").

    A record whose cleaned text has a character 5-gram Jaccard similarity of at least ``threshold``
    with a record kept before it is dropped as a near-duplicate of that record. 0.9 keeps apart
    tickets that share a template and differ in one field (the demo corpus's closest pair is 0.895);
    the LSH banding is derived from it. Every replica must use the same threshold.

    The recipe's ``near_dup`` step sets the threshold; ``threshold`` here is the shipped recipe's,
    and setting it to anything else stops the service at startup (change the recipe instead).
    ``enabled`` false turns the check off whatever the recipe says.
    """

    enabled: bool = True
    threshold: float = Field(default=0.9, ge=0.5, le=1.0)


class PreprocessSettings(ServiceSettings):
    model_config = service_config("preprocess")

    service_name: str = "preprocess"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=8102))
    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/preprocess.db")
    )
    consumer_group: str = "lmforge-preprocess"
    pii: PiiSettings = Field(default_factory=PiiSettings)
    near_dup: NearDupSettings = Field(default_factory=NearDupSettings)
    # The recipe file (YAML or JSON) the service runs (docs/curation.md, "Recipes and operators");
    # unset: the shipped recipe (lmforge/preprocess/recipes/default.yaml). LMFORGE_PREPROCESS_RECIPE.
    recipe: Path | None = None
