# ruff: noqa: RUF001  (Chinese text is written with full-width punctuation)
"""The MinHash signature computed directly is datasketch's, bit for bit, and so are the band keys.

Signatures are stored with every kept record and the index's band rows are derived from them, so
the direct computation must give exactly what ``MinHash(num_perm=128, seed=1, scheme="affine32")``
gives after ``update_batch`` with the shingles' UTF-8 bytes: for empty, short and long texts,
Chinese, English and mixed, before and after the shingle-hash store is full and starts again.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
from datasketch import MinHash

from lmforge.preprocess.near_dup import NUM_PERM, SCHEME, SEED, NearDuplicateIndex, shingles

TEXTS = [
    "",
    " ",
    "a",
    "abcd",
    "abcde",
    "abcdef",
    "Hello, my order has not arrived yet and the tracking page has not changed for a week.",
    "您好，我的订单还没有发货，请问：什么时候能到？麻烦尽快处理，谢谢！",
    "我的iPhone 15 Pro订单还没发货，order number 58213, tracking shows nothing since Monday。",
    "こんにちは、注文した商品がまだ届いていません。",
    "𠀀𠀁𠀂𠀃𠀄𠀅 astral ideographs and emoji 😀👍🎉",
    "ÀÉÎÕÜ ß ﬁ İ ſ: case folding changes lengths",
    "refund " * 200,
]


def _datasketch(text: str) -> bytes:
    mh = MinHash(num_perm=NUM_PERM, seed=SEED, scheme=SCHEME)
    mh.update_batch([g.encode() for g in shingles(text)])
    return np.asarray(mh.hashvalues, dtype="<u4").tobytes()


def _band_keys(index: NearDuplicateIndex, signature: bytes) -> list[tuple[int, int]]:
    width = 4 * index.rows
    return [
        (
            band,
            int.from_bytes(
                hashlib.blake2b(
                    signature[band * width : (band + 1) * width], digest_size=8, key=index._band_key
                ).digest(),
                "big",
                signed=True,
            ),
        )
        for band in range(index.bands)
    ]


@pytest.mark.parametrize("threshold", [0.9, 0.7])
def test_signatures_and_band_keys_are_datasketchs(threshold: float) -> None:
    index = NearDuplicateIndex(threshold)
    for _ in range(2):  # the second time from the shingle-hash store
        for text in TEXTS:
            fp = index.fingerprint(text)
            assert fp.shingles == shingles(text)
            assert fp.signature == _datasketch(text), text
            assert fp.bands == _band_keys(index, fp.signature) == index.band_keys(fp.signature)


def test_when_the_shingle_hash_store_starts_again() -> None:
    index = NearDuplicateIndex(0.9)
    rnd = random.Random(3)
    alphabet = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)] + list("abcdefghijklmnopqrstuvwxyz ")
    texts = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 400))) for _ in range(400)]
    texts += TEXTS
    seen: set[str] = set()
    for text in texts:  # over 2**16 distinct shingles: the store is emptied on the way
        seen |= shingles(text)
        assert index.fingerprint(text).signature == _datasketch(text)
    assert len(seen) > 1 << 16 and len(index._shingle_hashes) <= (1 << 16) + 500
    for text in texts[:50]:
        assert index.fingerprint(text).signature == _datasketch(text)
