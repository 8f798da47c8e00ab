"""Near-duplicates across the stream: MinHash signatures, LSH band rows in the database, and each
candidate verified by the exact Jaccard similarity of the two texts' shingle sets.

Every new record is compared with every record kept before it (not only those of its batch), so
the index lives in the service's database and survives restarts. See docs/curation.md,
"Near-duplicates", for the parameters, the race between replicas and determinism.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from datasketch import MinHash
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from lmforge.common.db import Database, insert_ignoring_conflicts
from lmforge.common.telemetry import get_logger

from .models import cleaned_records, near_dup_bands, near_dup_state

log = get_logger(__name__)

NUM_PERM = 128
SHINGLE_SIZE = 5
SEED = 1
SCHEME = "affine32"  # pinned, so a datasketch upgrade cannot silently change every signature
RECALL_AT_THRESHOLD = 0.95
OPERATOR = "minhash_lsh"
BAND_ROWS_PER_INSERT = 5_000

BandKey = tuple[int, int]


def shingles(text: str, size: int = SHINGLE_SIZE) -> set[str]:
    """Character n-grams of the case-folded text with whitespace collapsed: no word splitting, so
    Chinese (written without spaces) and English are shingled the same way."""
    norm = " ".join(text.casefold().split())
    if len(norm) <= size:
        return {norm} if norm else set()
    return {norm[i : i + size] for i in range(len(norm) - size + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def band_shape(threshold: float, num_perm: int = NUM_PERM, recall: float = RECALL_AT_THRESHOLD) -> tuple[int, int]:
    """(bands, rows per band): the most rows per band (the fewest false candidates) for which a pair
    with exactly ``threshold`` Jaccard similarity still shares a band with probability ``recall``.

    A pair of similarity s shares at least one band with probability 1 - (1 - s**r)**b. False
    candidates cost one exact verification; a missed pair is a near-duplicate kept, so the choice
    leans towards recall. For 0.9 and 128 permutations: 10 bands of 12 rows (0.963 at 0.9).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], not {threshold}")
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if candidate_probability(threshold, bands, rows) >= recall:
            return bands, rows
    return num_perm, 1


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    return float(1.0 - (1.0 - similarity**rows) ** bands)


@dataclass(frozen=True)
class Fingerprint:
    """What the index needs of one cleaned text: its shingles, MinHash signature and band keys."""

    shingles: set[str]
    signature: bytes
    bands: list[BandKey]


@dataclass(frozen=True)
class NearDuplicate:
    cleaned_id: int
    record_id: str
    similarity: float


class NearDuplicateIndex:
    """The LSH index over ``cleaned_records``, kept in ``near_dup_bands``.

    Stateless apart from its parameters: every lookup reads the database, so a new index object
    (a restarted replica, another replica) sees every record kept before.
    """

    def __init__(self, threshold: float = 0.9, num_perm: int = NUM_PERM, shingle_size: int = SHINGLE_SIZE) -> None:
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.bands, self.rows = band_shape(threshold, num_perm)
        self._permutations = MinHash(num_perm=num_perm, seed=SEED, scheme=SCHEME).permutations
        # Band hashes are salted with the banding, so rows written under another threshold never match.
        self._salt = f"lsh:{num_perm}:{self.bands}x{self.rows}:{shingle_size}".encode()
        self._band_key = self._salt[:64]  # blake2b takes a key of at most 64 bytes

    def parameters(self) -> dict[str, Any]:
        return {
            "operator": OPERATOR,
            "threshold": self.threshold,
            "shingles": f"char {self.shingle_size}-grams, case-folded",
            "num_perm": self.num_perm,
            "bands": self.bands,
            "rows": self.rows,
            "seed": SEED,
            "scheme": SCHEME,
            "verification": "exact Jaccard of shingle sets",
        }

    @property
    def banding(self) -> str:
        """What the band rows depend on: a stored index written under another banding is rebuilt."""
        return f"{self._salt.decode()}:{SEED}:{SCHEME}"

    def fingerprint(self, text: str) -> Fingerprint:
        grams = shingles(text, self.shingle_size)
        mh = MinHash(num_perm=self.num_perm, seed=SEED, scheme=SCHEME, permutations=self._permutations)
        mh.update_batch([g.encode() for g in grams])  # a minimum per permutation: order does not matter
        values = np.asarray(mh.hashvalues, dtype="<u4")
        return Fingerprint(grams, values.tobytes(), self.band_keys(values.tobytes()))

    def band_keys(self, signature: bytes) -> list[BandKey]:
        """The band rows of a stored signature (uint32 little-endian, one per permutation)."""
        keys = []
        width = 4 * self.rows
        for band in range(self.bands):
            chunk = signature[band * width : (band + 1) * width]
            digest = hashlib.blake2b(chunk, digest_size=8, key=self._band_key).digest()
            keys.append((band, int.from_bytes(digest, "big", signed=True)))
        return keys

    async def ensure_index(self, db: Database, page: int = 1_000) -> int | None:
        """Make the stored index this banding's: if its rows were written under another one (the
        recipe's threshold changed), or before the banding was recorded, rebuild them from every
        kept record, in the order they were kept, from their stored signatures (a record cleaned
        before signatures were stored gets one from its text). One transaction, which first locks
        the state row, so of several replicas starting at once one rebuilds and the others find it
        done. Returns the records indexed, or None when the index was already this banding's.

        Kept records that are near-duplicates of each other under the new threshold stay kept:
        the index decides for records that come after it, not for those already in versions.
        """
        now = datetime.now(UTC)
        async with db.sessions.begin() as session:
            await session.execute(
                insert_ignoring_conflicts(db.dialect, near_dup_state, {"name": "lsh", "banding": "", "indexed_at": now})
            )
            stored = (
                await session.execute(
                    update(near_dup_state)
                    .where(near_dup_state.c.name == "lsh")
                    .values(banding=near_dup_state.c.banding)  # takes the row lock (SQLite: the write lock)
                    .returning(near_dup_state.c.banding)
                )
            ).scalar_one()
            if stored == self.banding:
                return None
            await session.execute(delete(near_dup_bands))
            t, last, indexed = cleaned_records, 0, 0
            while True:
                rows = (
                    await session.execute(
                        select(t.c.id, t.c.minhash, t.c.text).where(t.c.id > last).order_by(t.c.id).limit(page)
                    )
                ).all()
                if not rows:
                    break
                bands = []
                for row in rows:
                    signature = row.minhash
                    if signature is None or len(signature) != 4 * self.num_perm:
                        signature = self.fingerprint(row.text).signature
                        await session.execute(update(t).where(t.c.id == row.id).values(minhash=signature))
                    bands += [{"band": b, "band_hash": h, "cleaned_id": row.id} for b, h in self.band_keys(signature)]
                # The first kept record owns a band row: pages go in id order, and so do rows in a
                # page. At most BAND_ROWS_PER_INSERT rows a statement: three parameters a row, and
                # PostgreSQL (asyncpg) takes at most 32,767 parameters in one statement.
                for i in range(0, len(bands), BAND_ROWS_PER_INSERT):
                    chunk = bands[i : i + BAND_ROWS_PER_INSERT]
                    await session.execute(insert_ignoring_conflicts(db.dialect, near_dup_bands, chunk))
                indexed += len(rows)
                last = rows[-1].id
            await session.execute(
                update(near_dup_state)
                .where(near_dup_state.c.name == "lsh")
                .values(banding=self.banding, indexed_at=now)
            )
        log.info("near-duplicate index rebuilt", banding=self.banding, previous=stored or None, records=indexed)
        return indexed

    async def find(
        self,
        session: AsyncSession,
        fp: Fingerprint,
        record_id: str,
        bands: Sequence[BandKey] | None = None,
        skip: Iterable[int] = (),
    ) -> tuple[NearDuplicate | None, set[int]]:
        """The first-kept record (lowest id) sharing a band with ``fp`` whose exact Jaccard
        similarity reaches the threshold, and the ids checked. An older version of the same record
        (an upstream edit) is never its duplicate: the edit supersedes it."""
        keys = list(bands if bands is not None else fp.bands)
        if not keys:
            return None, set()
        t = cleaned_records
        # One equality pair per band, OR-ed: each is a lookup in the primary key. (A row-value IN,
        # ``(band, band_hash) IN (...)``, makes SQLite scan the whole index: 16 ms a lookup at
        # 200,000 band rows, against microseconds.)
        b = near_dup_bands.c
        owners = select(b.cleaned_id).where(or_(*(and_(b.band == band, b.band_hash == h) for band, h in keys)))
        skipped = set(skip)
        rows = (
            await session.execute(select(t.c.id, t.c.record_id, t.c.text).where(t.c.id.in_(owners)).order_by(t.c.id))
        ).all()
        checked: set[int] = set()
        for row in rows:
            if row.id in skipped or row.record_id == record_id:
                continue
            checked.add(row.id)
            similarity = jaccard(fp.shingles, shingles(row.text, self.shingle_size))
            if similarity >= self.threshold:
                return NearDuplicate(row.id, row.record_id, similarity), checked
        return None, checked

    async def add(
        self, session: AsyncSession, fp: Fingerprint, cleaned_id: int, record_id: str, checked: set[int]
    ) -> NearDuplicate | None:
        """Insert the kept record's band rows (``ON CONFLICT DO NOTHING``), then re-check the owners
        of the rows that were already taken. On PostgreSQL the insert of a row that a concurrent,
        uncommitted transaction holds waits for it; once it commits, the conflict shows here and the
        re-check (a new statement, so a new READ COMMITTED snapshot) sees its record. A duplicate
        found this way is returned and the caller drops the record (and its band rows)."""
        rows = [{"band": b, "band_hash": h, "cleaned_id": cleaned_id} for b, h in fp.bands]
        dialect = session.get_bind().dialect.name
        stmt = insert_ignoring_conflicts(dialect, near_dup_bands, rows).returning(near_dup_bands.c.band)
        inserted = set((await session.execute(stmt)).scalars())
        taken = [key for key in fp.bands if key[0] not in inserted]
        if not taken:
            return None
        found, _ = await self.find(session, fp, record_id, bands=taken, skip=checked | {cleaned_id})
        return found
