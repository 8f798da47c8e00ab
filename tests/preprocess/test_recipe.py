# ruff: noqa: RUF001  (Chinese text is written with full-width punctuation)
"""Recipes and their operators.

- Each operator on its own: cleaning operators change what they should and nothing else; each
  filter keeps a good text and drops a bad one, with the value it measured and its threshold.
- Recipes load from YAML or JSON; a bad one is refused with the operator and parameter named,
  and the service does not start on it. The hash is stable and covers every parameter.
- The shipped recipe keeps Chinese and English business text (the demo corpus included).
- Through the real handler, on SQLite and PostgreSQL: a filtered record is in the dropped table
  with its reason, measured value, threshold and recipe; manifests count it and name the recipe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from sqlalchemy import select

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import Event
from lmforge.common.kafka import EventProducer, InboundMessage
from lmforge.common.settings import KafkaSettings
from lmforge.devstack.demo import make_corpus
from lmforge.preprocess import api, filters
from lmforge.preprocess.app import build_app, near_duplicate_index
from lmforge.preprocess.cleaning import (
    KEPT_PUNCTUATION,
    collapse_whitespace,
    fix_mojibake,
    normalize_unicode,
    remove_control_chars,
    strip_html,
)
from lmforge.preprocess.handlers import RawRecordHandler
from lmforge.preprocess.models import DROP_REASONS, cleaned_records, dropped_records, metadata, outbox
from lmforge.preprocess.near_dup import NearDuplicateIndex
from lmforge.preprocess.pii import DEFAULT_MODES
from lmforge.preprocess.recipe import (
    DEFAULT_RECIPE_PATH,
    FILTER_OPERATORS,
    OPERATORS,
    Recipe,
    RecipeError,
    default_recipe,
    load_recipe,
    parse_recipe,
)
from lmforge.preprocess.settings import NearDupSettings, PreprocessSettings
from lmforge.preprocess.store import DatasetStore

from ..common.factories import raw_record

ZH = "您好，我的订单还没有发货，请问：什么时候能到？麻烦尽快处理，谢谢！"
EN = "Hello, my order has not arrived yet and the tracking page has not changed for a week. Please help."
ZH_SHORT = "发票抬头错了，请重开。"
EN_SHORT = "Where is my refund?"
FRENCH = "Bonjour, ma commande n'est pas arrivée et je voudrais un remboursement, s'il vous plaît."
RUSSIAN = "Здравствуйте, мой заказ так и не пришёл, прошу вернуть деньги как можно скорее."


# --- cleaning operators --------------------------------------------------------------------------


@pytest.mark.parametrize("text", [ZH, EN, "Café déjà vu — “ok”", "退款¥1,234.56（急）"])
def test_fix_mojibake_repairs_utf8_read_as_latin1_or_cp1252(text: str) -> None:
    assert fix_mojibake(text.encode().decode("latin-1")) == text
    assert fix_mojibake(text.encode().decode("sloppy-windows-1252")) == text
    assert fix_mojibake(text) == text, "correct text is left alone"


def test_fix_mojibake_changes_nothing_but_the_encoding() -> None:
    text = "“curly” ＡＢＣ，ﬁ &amp; <b>x</b>"  # quotes, full width, ligatures, HTML: other operators' work
    assert fix_mojibake(text) == text


def test_html_to_text() -> None:
    assert strip_html("<div><p>您好</p><script>x()</script><p>World &amp; co</p></div>").split() == [
        "您好",
        "World",
        "&",
        "co",
    ]


def test_unicode_normalisation_keeps_cjk_full_width_punctuation_by_default() -> None:
    assert normalize_unicode("您好，请问：退款？（急）") == "您好，请问：退款？（急）"
    assert normalize_unicode("ＡＢＣ１２３，ｆｉ") == "ABC123，fi"
    assert normalize_unicode("您好，请问：", keep="") == "您好,请问:", "a recipe can fold everything"
    assert normalize_unicode("e\u0301ﬁ", form="NFC") == "\u00e9ﬁ", "NFC composes and keeps compatibility forms"


def test_control_characters_are_removed() -> None:
    text = "a\x00b\x07c\u200bd\ufeffe\u00adf\x1bg\x7fh\u200ei\x85"
    assert remove_control_chars(text) == "abcdefghi"
    assert remove_control_chars("tab\there\nline\r\n") == "tab\there\nline\r\n", "whitespace is another operator's"
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert remove_control_chars(family) == family, "the zero-width joiner stays"
    assert remove_control_chars(ZH) == ZH


def test_whitespace_collapses() -> None:
    assert collapse_whitespace("  a \t b\n\n c\u3000d  ") == "a b c d"


def test_tokens_count_cjk_characters_and_words() -> None:
    assert filters.tokens("退款 order 58213，thanks") == ["退", "款", "order", "58213，thanks"]
    assert len(filters.tokens(ZH_SHORT)) == 11
    assert len(filters.tokens(EN_SHORT)) == 4


# --- filter operators ----------------------------------------------------------------------------


def test_char_length() -> None:
    assert filters.char_length("ok", 2, 10) == filters.Verdict(True, 2, 2)
    assert filters.char_length("?", 2, 10) == filters.Verdict(False, 1, 2)
    assert filters.char_length("x" * 11, 2, 10) == filters.Verdict(False, 11, 10)


def test_token_length() -> None:
    assert filters.token_length(ZH_SHORT, 2).keep
    assert filters.token_length(EN_SHORT, 2).keep
    assert filters.token_length("thanks", 2) == filters.Verdict(False, 1, 2)
    assert filters.token_length("退 " * 30, 1, 20) == filters.Verdict(False, 30, 20)


def test_symbol_ratio() -> None:
    assert filters.symbol_ratio(ZH, 0.5).keep and filters.symbol_ratio(EN, 0.5).keep
    bad = filters.symbol_ratio("!!! $$$ ### >>> ok", 0.5)
    assert (bad.keep, bad.measured, bad.threshold) == (False, 0.857143, 0.5)


def test_digit_ratio() -> None:
    assert filters.digit_ratio("T-1: my card ending 0128 was charged twice", 0.9).keep
    assert filters.digit_ratio("身份证号410105199107236510", 0.9).keep
    assert filters.digit_ratio("3528 4723 6786 0201 3301", 0.9) == filters.Verdict(False, 1.0, 0.9)


def test_repeated_ngrams() -> None:
    assert filters.repeated_ngrams(EN, 3, 0.5) == filters.Verdict(True, 0.0, 0.5)
    assert filters.repeated_ngrams(ZH, 3, 0.5).keep
    spam = filters.repeated_ngrams("buy now cheap " * 10, 3, 0.5)
    assert (spam.keep, spam.measured) == (False, 0.892857)  # 28 trigrams, 3 distinct
    assert filters.repeated_ngrams("好好好好好好好好", 3, 0.5).measured == 0.833333
    assert filters.repeated_ngrams("a b", 3, 0.5) == filters.Verdict(True, 0.0, 0.5), "shorter than n"


@pytest.mark.parametrize("text", [FRENCH, RUSSIAN])
def test_language_drops_other_languages(text: str) -> None:
    verdict = filters.language(text, ["en", "zh"], 0.1, 40)
    assert verdict == filters.Verdict(False, 0.0, 0.1)


@pytest.mark.parametrize(
    "text",
    [
        ZH,
        EN,
        ZH_SHORT,
        EN_SHORT,
        "我的iPhone 15 Pro订单还没发货，order number 58213, tracking shows nothing since Monday。",
        "发货日期 2020年10月9日，客户说 login from the app failed again and the refund is missing",
        "ticket 1215 (aadafe): parcel 9621585 arrived damaged",  # hex ids and numbers are no language
    ],
)
def test_language_keeps_chinese_and_english_business_text(text: str) -> None:
    assert filters.language(text, ["en", "zh"], 0.1, 40).keep


def test_language_leaves_texts_too_short_to_judge() -> None:
    short = "Bonjour, ma commande n'est pas arrivée"  # 32 letters
    assert filters.language(short, ["en", "zh"], 0.1, 40) == filters.Verdict(True, 1.0, 0.1)
    assert filters.language(short, ["en", "zh"], 0.1, 10) == filters.Verdict(False, 0.0, 0.1)


def test_blocklist() -> None:
    recipe = _recipe([{"op": "blocklist", "params": {"patterns": [r"\blorem ipsum\b", "测试数据", r"\btest-\d+"]}}])
    pipeline = recipe.pipeline()
    assert pipeline.run(EN).dropped is None
    dropped = pipeline.run("Lorem Ipsum dolor: 测试数据").dropped
    assert dropped is not None and (dropped.operator, dropped.measured, dropped.threshold) == ("blocklist", 2, 0)
    cased = _recipe([{"op": "blocklist", "params": {"patterns": ["lorem"], "ignore_case": False}}]).pipeline()
    assert cased.run("Lorem").dropped is None and cased.run("lorem").dropped is not None


# --- recipes -------------------------------------------------------------------------------------


def _recipe(operators: list[dict[str, Any]], **fields: Any) -> Recipe:
    return parse_recipe({"name": "test", "version": 1, "operators": operators} | fields)


def test_the_same_recipe_in_yaml_and_json_has_the_same_hash(tmp_path: Path) -> None:
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text(
        "name: tickets\nversion: 3\noperators:\n  - op: collapse_whitespace\n"
        "  - op: language\n    params: {allowed: [zh, en]}\n",
        encoding="utf-8",
    )
    json_file = tmp_path / "r.json"
    operators = [
        {"op": "collapse_whitespace", "params": {}},
        {"op": "language", "params": {"min_chars": 20, "min_probability": 0.5, "allowed": ["en", "zh"]}},
    ]
    json_file.write_text(json.dumps({"operators": operators, "version": 3, "name": "tickets"}), encoding="utf-8")
    a, b = load_recipe(yaml_file), load_recipe(json_file)
    assert a.hash == b.hash, "key order, language order and spelled-out defaults do not change the hash"
    assert len(a.hash) == 64 and a.reference() == {"name": "tickets", "version": 3, "hash": a.hash}
    described = parse_recipe(a.model_dump() | {"description": "for readers"})
    assert described.hash == a.hash, "the description is not part of the hash"
    for changed in (
        a.model_dump() | {"version": 4},
        a.model_dump() | {"operators": [a.operators[1].model_dump(), a.operators[0].model_dump()]},
        a.model_dump() | {"operators": [operators[0], operators[1] | {"params": {"allowed": ["en"]}}]},
    ):
        assert parse_recipe(changed).hash != a.hash


def test_the_default_recipe_hash_is_stable() -> None:
    """If this fails, the default recipe or an operator's defaults changed: give it a new version."""
    recipe = default_recipe()
    assert (recipe.name, recipe.version) == ("zh-en-business", 1)
    assert recipe.hash == "99dbb5e600fa68f4439a1ebdf65e84956cd912d44b9af476e1285ba4f8be9926"
    assert load_recipe(DEFAULT_RECIPE_PATH).hash == recipe.hash


@pytest.mark.parametrize(
    ("operators", "message"),
    [
        ([{"op": "spellcheck"}], "operators[0]: unknown operator 'spellcheck'"),
        ([{"op": "char_length", "params": {"minimum": 3}}], "operators[0]: operator 'char_length': parameter minimum"),
        ([{"op": "char_length", "params": {"min": 5, "max": 2}}], "max (2) is below min (5)"),
        ([{"op": "digit_ratio", "params": {"max": 1.5}}], "operator 'digit_ratio': parameter max"),
        ([{"op": "digit_ratio"}], "operator 'digit_ratio': parameter max: Field required"),
        ([{"op": "language", "params": {"allowed": ["en", "xx"]}}], "unknown language codes ['xx']"),
        ([{"op": "blocklist", "params": {"patterns": ["ok", "(unclosed"]}}], "pattern 1 '(unclosed' is not a regular"),
        ([{"op": "mask_pii", "params": {"modes": {"phone": "blur"}}}], "operator 'mask_pii': parameter modes.phone"),
        ([{"op": "mask_pii", "params": {"modes": {"face": "placeholder"}}}], "parameter modes.face"),
        ([{"op": "near_dup"}, {"op": "collapse_whitespace"}], "near_dup must be the last operator"),
        ([{"op": "mask_pii"}, {"op": "mask_pii"}], "mask_pii is named 2 times"),
        ([{"op": "collapse_whitespace", "extra": 1}], "operators[0].extra: Extra inputs are not permitted"),
        ([], "operators: List should have at least 1 item"),
    ],
)
def test_a_bad_recipe_is_refused_naming_the_operator_and_parameter(
    operators: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(RecipeError) as exc:
        parse_recipe({"name": "bad", "version": 1, "operators": operators}, "recipe bad.yaml")
    assert str(exc.value).startswith("recipe bad.yaml: ")
    assert message in str(exc.value)


def test_bad_recipe_files_are_refused(tmp_path: Path) -> None:
    cases = {
        "missing.yaml": None,
        "broken.yaml": "name: x\noperators: [",
        "broken.json": '{"name": "x",',
        "recipe.toml": "name = 'x'",
        "nameless.yaml": "version: 1\noperators:\n  - op: collapse_whitespace\n",
    }
    messages = {}
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(RecipeError) as exc:
            load_recipe(tmp_path / name)
        messages[name] = str(exc.value)
        assert messages[name].startswith(f"recipe {tmp_path / name}: ")
    assert "cannot be read" in messages["missing.yaml"]
    assert "not valid YAML" in messages["broken.yaml"] and "not valid JSON" in messages["broken.json"]
    assert "not a .yaml, .yml or .json file" in messages["recipe.toml"]
    assert "name: Field required" in messages["nameless.yaml"]


def test_pseudonyms_without_a_key_are_refused_when_the_pipeline_is_built() -> None:
    recipe = _recipe([{"op": "mask_pii", "params": {"modes": {"phone": "pseudonym"}}}])
    with pytest.raises(RecipeError, match="mask_pii: consistent pseudonyms need a key"):
        recipe.pipeline()
    masked = recipe.pipeline(pseudonym_key="k" * 32).run("call 13812345678").text
    assert masked.startswith("call [PHONE_") and "138" not in masked


def test_operators_run_in_the_recipe_order() -> None:
    html_first = _recipe([{"op": "html_to_text"}, {"op": "char_length", "params": {"min": 5}}]).pipeline()
    filter_first = _recipe([{"op": "char_length", "params": {"min": 5}}, {"op": "html_to_text"}]).pipeline()
    assert html_first.run("<p>ok</p>").dropped is not None
    assert filter_first.run("<p>ok</p>").dropped is None
    masked = _recipe([{"op": "mask_pii"}, {"op": "blocklist", "params": {"patterns": ["138"]}}]).pipeline()
    outcome = masked.run("call 13812345678")
    assert (outcome.text, outcome.masked, outcome.dropped) == ("call [PHONE]", {"phone": 1}, None)


def test_a_text_left_empty_is_not_filtered() -> None:
    outcome = default_recipe().pipeline().run("<p> \u200b </p>")
    assert (outcome.text, outcome.dropped) == ("", None), "the handler drops it as empty"


# --- the shipped recipe --------------------------------------------------------------------------


def test_the_default_recipe() -> None:
    recipe = default_recipe()
    ops = [s.op for s in recipe.operators]
    assert ops[:5] == [
        "fix_mojibake",
        "html_to_text",
        "normalize_unicode",
        "remove_control_chars",
        "collapse_whitespace",
    ]
    assert set(FILTER_OPERATORS) <= set(ops), "every filter is in the shipped recipe"
    assert ops[-2:] == ["mask_pii", "near_dup"]
    params = {s.op: s.params for s in recipe.operators}
    assert params["normalize_unicode"]["keep"] == KEPT_PUNCTUATION
    assert params["language"]["allowed"] == ["en", "zh"]
    assert params["mask_pii"]["modes"] == {t.value: m.value for t, m in DEFAULT_MODES.items()}
    assert recipe.near_dup_threshold == NearDupSettings().threshold == 0.9
    pipeline = recipe.pipeline()
    for text in (ZH, EN, ZH_SHORT, EN_SHORT, "ok thanks", "退款"):
        assert pipeline.run(text).dropped is None, text
    for text, op in ((FRENCH, "language"), (RUSSIAN, "language"), ("?", "char_length"), ("thanks", "token_length")):
        dropped = pipeline.run(text).dropped
        assert dropped is not None and dropped.operator == op, text


def test_the_recipe_in_the_docs_is_the_shipped_one() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "curation.md").read_text(encoding="utf-8")
    block = doc.split("## Recipes and operators", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert parse_recipe(yaml.safe_load(block)).hash == default_recipe().hash


def test_the_default_recipe_keeps_every_demo_ticket() -> None:
    pipeline = default_recipe().pipeline()
    dropped = [(r["text"], d) for r in make_corpus(500) if (d := pipeline.run(r["text"]).dropped)]
    assert dropped == []


def test_every_filter_is_a_drop_reason() -> None:
    assert set(FILTER_OPERATORS) == set(DROP_REASONS) - {"duplicate", "near_duplicate", "empty"}
    assert {op.kind for op in OPERATORS.values()} == {"clean", "filter", "mask", "dedup"}


# --- settings and startup ------------------------------------------------------------------------


def test_the_recipe_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert PreprocessSettings().recipe is None
    path = tmp_path / "tickets.yaml"
    monkeypatch.setenv("LMFORGE_PREPROCESS_RECIPE", str(path))
    assert PreprocessSettings().recipe == path


def test_the_near_duplicate_threshold_comes_from_the_recipe() -> None:
    recipe = _recipe([{"op": "near_dup", "params": {"threshold": 0.8}}])
    index = near_duplicate_index(PreprocessSettings(), recipe)
    assert index is not None and index.threshold == 0.8
    assert near_duplicate_index(PreprocessSettings(), _recipe([{"op": "collapse_whitespace"}])) is None
    assert near_duplicate_index(PreprocessSettings(near_dup=NearDupSettings(enabled=False)), recipe) is None
    with pytest.raises(
        RecipeError, match=r"NEAR_DUP__THRESHOLD is 0\.9, but recipe test v1 sets near_dup threshold 0\.8"
    ):
        near_duplicate_index(PreprocessSettings(near_dup=NearDupSettings(threshold=0.9)), recipe)


def test_a_bad_recipe_stops_the_service_at_startup(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nversion: 1\noperators:\n  - op: spellcheck\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="unknown operator 'spellcheck'"):
        build_app(PreprocessSettings(recipe=bad))
    env = os.environ | {"LMFORGE_PREPROCESS_RECIPE": str(bad)}
    result = subprocess.run(
        [sys.executable, "-m", "lmforge.preprocess"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1].startswith(f"preprocess: recipe {bad}: operators[0]: unknown operator")
    )


# --- through the handler and the database --------------------------------------------------------


def _relay(database: Database) -> OutboxRelay:
    return OutboxRelay(outbox, database.sessions, EventProducer(KafkaSettings(), source="tests"))  # only woken


def _message(offset: int, source_id: str, text: str) -> InboundMessage:
    value, headers = Event(data=raw_record(source_id, text), source="tests").to_kafka()
    return InboundMessage("raw-data", 0, offset, source_id.encode(), value, tuple(headers), 0)


async def test_a_filtered_record_is_dropped_with_its_reason(database: Database, tmp_path: Path) -> None:
    await database.create_all(metadata)
    recipe = default_recipe()
    handle = RawRecordHandler(database, "lmforge-preprocess", _relay(database), near_dups=NearDuplicateIndex())
    stream = [("Z-1", ZH), ("E-1", EN), ("F-1", FRENCH), ("D-1", "3528 4723 6786 0201 3301"), ("X-1", "<p> </p>")]
    for offset, (sid, text) in enumerate(stream):
        await handle(_message(offset, sid, text))

    async with database.sessions() as s:
        kept = (await s.execute(select(cleaned_records.c.record_id, cleaned_records.c.recipe_hash))).all()
        dropped = {r["record_id"]: dict(r) for r in (await s.execute(select(dropped_records))).mappings()}
    assert sorted(kept) == [("crm:E-1", recipe.hash), ("crm:Z-1", recipe.hash)], "kept records name their recipe"
    assert set(dropped) == {"crm:F-1", "crm:D-1", "crm:X-1"}
    french, digits = dropped["crm:F-1"], dropped["crm:D-1"]
    assert (french["reason"], french["operator"], french["measured"], french["threshold"]) == (
        "language",
        "language",
        0.0,
        0.1,
    )
    assert (digits["reason"], digits["operator"], digits["measured"], digits["threshold"]) == (
        "digit_ratio",
        "digit_ratio",
        1.0,
        0.9,
    )
    assert dropped["crm:X-1"]["reason"] == "empty", "nothing left after cleaning is still 'empty'"
    assert {d["recipe_hash"] for d in dropped.values()} == {recipe.hash}

    store = DatasetStore(database, ArtifactStore(str(tmp_path / "artifacts")), _relay(database), handle.near_dups)
    cut = await store.create_version("tickets")
    manifest = store.manifest(cut["manifest_uri"])
    assert manifest["dropped"] == {"duplicate": 0, "near_duplicate": 0, "empty": 1, "language": 1, "digit_ratio": 1}
    assert cut["config_hash"] == manifest["config_hash"] == recipe.hash
    assert manifest["recipe"] == {"name": "zh-en-business", "version": 1, "hash": recipe.hash}
    assert manifest["pipeline_config"] == recipe.definition()
    assert {r["recipe"] for r in manifest["records"]} == {recipe.hash}
    assert (await store.stats())["dropped"] == {"empty": 1, "language": 1, "digit_ratio": 1}

    app = FastAPI()
    app.include_router(api.router)
    app.state.datasets = store
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://preprocess") as client:
        rows = (await client.get("/dropped", params={"reason": "language"})).json()
        assert [(r["record_id"], r["operator"], r["measured"], r["threshold"]) for r in rows] == [
            ("crm:F-1", "language", 0.0, 0.1)
        ]
        assert rows[0]["recipe_hash"] == recipe.hash
        version = (await client.get("/datasets/tickets/versions/1")).json()
        assert version["recipe"]["hash"] == recipe.hash and version["records"][0]["recipe"] == recipe.hash


async def test_the_handler_runs_the_recipe_it_is_given(database: Database) -> None:
    await database.create_all(metadata)
    recipe = _recipe(
        [
            {"op": "collapse_whitespace"},
            {"op": "blocklist", "params": {"patterns": ["internal only"]}},
            {"op": "mask_pii", "params": {"modes": {"phone": "partial"}}},
        ],
        name="internal",
    )
    handle = RawRecordHandler(database, "lmforge-preprocess", _relay(database), recipe.pipeline())
    await handle(_message(0, "A-1", "INTERNAL ONLY: the  staging   password"))
    await handle(_message(1, "A-2", "please  call 13812345678"))
    async with database.sessions() as s:
        kept = (await s.execute(select(cleaned_records.c.text, cleaned_records.c.recipe_hash))).all()
        dropped = (await s.execute(select(dropped_records))).mappings().one()
    assert kept == [("please call 138****5678", recipe.hash)]
    assert (dropped["reason"], dropped["measured"], dropped["threshold"], dropped["recipe_hash"]) == (
        "blocklist",
        1.0,
        0.0,
        recipe.hash,
    )
