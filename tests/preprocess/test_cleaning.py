from __future__ import annotations

import pytest

from lmforge.common.events import Split
from lmforge.preprocess.cleaning import CONFIG_HASH, clean_text, split_for


@pytest.mark.parametrize(
    ("raw", "clean", "masked"),
    [
        ("<div><p>Hello</p><p>World</p></div>", "Hello World", {}),
        ("<script>steal()</script>Fine &amp; dandy", "Fine & dandy", {}),
        ("\uff26\uff55\uff4c\uff4c  width\n\ttext", "Full width text", {}),  # NFKC folds full-width
        ("mail ann.lee@example.co.uk now", "mail [EMAIL] now", {"email": 1}),
        ("call +1 (555) 010-2030 or 555-010-2030", "call [PHONE] or [PHONE]", {"phone": 2}),
        ("+44 20 7946 0958", "[PHONE]", {"phone": 1}),
        ("order 48213 shipped in 2 days", "order 48213 shipped in 2 days", {}),
        ("<p> </p>", "", {}),
    ],
)
def test_clean_text(raw: str, clean: str, masked: dict[str, int]) -> None:
    assert clean_text(raw) == (clean, masked)


def test_split_is_deterministic_and_roughly_8_1_1() -> None:
    splits = [split_for(f"crm:T-{i}") for i in range(5000)]
    assert splits == [split_for(f"crm:T-{i}") for i in range(5000)]
    share = {s: splits.count(s) / len(splits) for s in Split}
    assert 0.77 < share[Split.TRAIN] < 0.83 and 0.08 < share[Split.VAL] < 0.12 and 0.08 < share[Split.TEST] < 0.12
    assert len(CONFIG_HASH) == 16
