"""Near-duplicates across the stream: MinHash signatures, LSH band rows in the database, and each
candidate verified by the exact Jaccard similarity of the two texts' shingle sets.

Every new record is compared with every record kept before it (not only those of its batch), so
the index lives in the service's database and survives restarts. See docs/curation.md,
"Near-duplicates", for the parameters, the race between replicas and determinism.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from datasketch import MinHash
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from lmforge.common.db import IN_LIST_LIMIT, Database, chunks, insert_ignoring_conflicts
from lmforge.common.telemetry import get_logger

from .models import cleaned_records, near_dup_bands, near_dup_state

log = get_logger(__name__)

NUM_PERM = 128
SHINGLE_SIZE = 5
SEED = 1
SCHEME = "affine32"  # pinned, so a datasketch upgrade cannot silently change every signature
RECALL_AT_THRESHOLD = 0.95
OPERATOR = "minhash_lsh"

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
    cleaned_id: int | None  # None: kept earlier in the same batch
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
        """The text's shingles, MinHash signature and band keys.

        The signature is the one datasketch's ``MinHash(num_perm, seed=SEED, scheme=SCHEME)`` gives
        after ``update_batch`` with the shingles' UTF-8 bytes, bit for bit, computed without
        building one: each shingle's 32-bit hash (the first 4 bytes of its SHA-1, little-endian)
        pre-mixed with MurmurHash3's 32-bit finalizer, then per permutation the minimum over the
        shingles of ``a * h + b`` modulo 2**32; no shingle leaves every value at 2**32 - 1. A
        shingle's mixed hash is kept (up to 2**16 of them, then the store starts again), since
        most shingles of business text recur and SHA-1 is most of the cost.
        tests/preprocess/test_recipe_speed_near_dup.py compares it with datasketch's.
        """
        grams = shingles(text, self.shingle_size)
        if not grams:
            signature = b"\xff" * (4 * self.num_perm)
            return Fingerprint(grams, signature, self.band_keys(signature))
        try:
            known = self._shingle_hashes
        except AttributeError:
            self._shingle_hashes: dict[str, int] = {}
            known = self._shingle_hashes
        hashes = [known.get(g) for g in grams]
        if None in hashes:
            if len(known) > 1 << 16:
                known.clear()
            ordered = list(grams)  # the set's order, as in hashes
            for i in [i for i, h in enumerate(hashes) if h is None]:
                h = int.from_bytes(hashlib.sha1(ordered[i].encode()).digest()[:4], "little")
                h ^= h >> 16  # MurmurHash3's fmix32, as datasketch's _fmix(hv, 32)
                h = (h * 0x85EBCA6B) & 0xFFFFFFFF
                h ^= h >> 13
                h = (h * 0xC2B2AE35) & 0xFFFFFFFF
                h ^= h >> 16
                hashes[i] = known[ordered[i]] = h
        a, b = self._permutations
        values = (np.array(hashes, dtype=np.uint32)[:, None] * a + b).min(axis=0)
        signature = values.astype("<u4", copy=False).tobytes()
        return Fingerprint(grams, signature, self.band_keys(signature))

    def band_keys(self, signature: bytes) -> list[BandKey]:
        """The band rows of a stored signature (uint32 little-endian, one per permutation)."""
        try:
            keyed = self._keyed_blake2b
        except AttributeError:  # the keyed hash's first block, computed once and copied per band
            self._keyed_blake2b: Any = hashlib.blake2b(digest_size=8, key=self._band_key)
            keyed = self._keyed_blake2b
        keys = []
        width = 4 * self.rows
        for band in range(self.bands):
            h = keyed.copy()
            h.update(signature[band * width : (band + 1) * width])
            keys.append((band, int.from_bytes(h.digest(), "big", signed=True)))
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
                # The first kept record owns a band row: pages go in id order, and so do rows in a page.
                await self.insert_bands(session, bands)
                indexed += len(rows)
                last = rows[-1].id
            await session.execute(
                update(near_dup_state)
                .where(near_dup_state.c.name == "lsh")
                .values(banding=self.banding, indexed_at=now)
            )
        log.info("near-duplicate index rebuilt", banding=self.banding, previous=stored or None, records=indexed)
        return indexed

    async def view(self, session: AsyncSession, fingerprints: Iterable[Fingerprint]) -> IndexView:
        """What the index holds for these fingerprints' bands, read in a few statements: the owner
        of each band row, with its text. A batch decides all its records against it, adding the
        records it keeps as it goes (``IndexView``)."""
        keys = {key for fp in fingerprints for key in fp.bands}
        owners: dict[BandKey, int] = {}
        b = near_dup_bands.c
        # One term per band, ``band = ? AND band_hash IN (...)``, OR-ed: each hash a lookup in the
        # primary key. (A row-value IN, ``(band, band_hash) IN (...)``, makes SQLite scan the whole
        # index.) At most IN_LIST_LIMIT parameters a statement: drivers cap them.
        by_band: dict[int, list[int]] = {}
        for band, band_hash in sorted(keys):
            by_band.setdefault(band, []).append(band_hash)
        terms: list[tuple[int, list[int]]] = []
        for band, hashes in by_band.items():
            terms += [(band, list(some)) for some in chunks(hashes)]
        groups: list[list[tuple[int, list[int]]]] = []
        size = 0
        for band, hashes in terms:
            if not groups or size + len(hashes) + 1 > IN_LIST_LIMIT:
                groups.append([])
                size = 0
            groups[-1].append((band, hashes))
            size += len(hashes) + 1
        for group in groups:
            where = or_(*(and_(b.band == band, b.band_hash.in_(hashes)) for band, hashes in group))
            rows = await session.execute(select(b.band, b.band_hash, b.cleaned_id).where(where))
            owners.update({(band, band_hash): cleaned_id for band, band_hash, cleaned_id in rows})
        t = cleaned_records
        candidates: dict[int, Candidate] = {}
        ids = sorted(set(owners.values()))
        for some in chunks(ids):
            rows = await session.execute(select(t.c.id, t.c.record_id, t.c.text).where(t.c.id.in_(some)))
            for row in rows:
                candidates[row.id] = Candidate(row.id, row.id, row.record_id, text=row.text)
        return IndexView(self, {key: candidates[cid] for key, cid in owners.items() if cid in candidates})

    async def find(self, session: AsyncSession, fp: Fingerprint, record_id: str) -> NearDuplicate | None:
        """The first-kept record sharing a band with ``fp`` whose exact Jaccard similarity reaches
        the threshold (``IndexView.match``), as the index stands in ``session``."""
        return (await self.view(session, [fp])).match(fp, record_id)

    async def insert_bands(self, session: AsyncSession, rows: list[dict[str, int]]) -> int:
        """Insert band rows (``band``, ``band_hash``, ``cleaned_id``), ``ON CONFLICT DO NOTHING``,
        and return how many went in. Fewer than given: another transaction took a band row since
        the view was read. On PostgreSQL the insert of a row that a concurrent, uncommitted
        transaction holds waits for it, and sees the conflict once it commits; the caller then
        decides its records again, and a new view sees that transaction's records."""
        if not rows:
            return 0
        stmt = insert_ignoring_conflicts(session.get_bind().dialect.name, near_dup_bands).returning(
            near_dup_bands.c.band
        )
        return len((await session.execute(stmt, rows)).all())  # sent in pages that fit the driver


async def mark_index_stale(db: Database) -> None:
    """A service running without the index (no ``near_dup`` step, or it switched off) keeps records
    without band rows: the stored index no longer holds every kept record, so the next start with
    the index rebuilds it (``NearDuplicateIndex.ensure_index``)."""
    async with db.sessions.begin() as session:
        await session.execute(update(near_dup_state).where(near_dup_state.c.name == "lsh").values(banding=""))


# A record kept earlier in the same batch comes after every stored one in the order records were kept.
_PENDING = 1 << 62


class Candidate:
    """A kept record that owns band rows: stored (``cleaned_id``) or kept earlier in the batch
    (``cleaned_id`` None until it is inserted). ``order`` is the order records were kept in."""

    __slots__ = ("_shingles", "cleaned_id", "order", "record_id", "text")

    def __init__(
        self,
        cleaned_id: int | None,
        order: int,
        record_id: str,
        text: str | None = None,
        grams: set[str] | None = None,
    ) -> None:
        self.cleaned_id, self.order, self.record_id, self.text = cleaned_id, order, record_id, text
        self._shingles = grams

    def shingles(self, size: int) -> set[str]:
        if self._shingles is None:
            self._shingles = shingles(self.text or "", size)
        return self._shingles


class IndexView:
    """The index as a batch sees it: the stored owners of its records' bands, and the records the
    batch keeps, in order. Deciding a batch's records one after another against it gives the
    decisions handling them one at a time would: the first-kept owner of a band row owns it."""

    def __init__(self, index: NearDuplicateIndex, owners: dict[BandKey, Candidate]) -> None:
        self.index = index
        self.owners = owners
        self._kept = 0

    def match(self, fp: Fingerprint, record_id: str) -> NearDuplicate | None:
        """The first-kept owner of one of ``fp``'s bands whose exact Jaccard similarity reaches
        the threshold. An older version of the same record (an upstream edit) is never its
        duplicate: the edit supersedes it."""
        found = {id(c): c for key in fp.bands if (c := self.owners.get(key)) is not None}
        for candidate in sorted(found.values(), key=lambda c: c.order):
            if candidate.record_id == record_id:
                continue
            similarity = jaccard(fp.shingles, candidate.shingles(self.index.shingle_size))
            if similarity >= self.index.threshold:
                return NearDuplicate(candidate.cleaned_id, candidate.record_id, similarity)
        return None

    def keep(self, fp: Fingerprint, record_id: str) -> tuple[Candidate, list[BandKey]]:
        """A record the batch keeps: it owns the bands nobody owned before it. Returns it and the
        band rows to insert for it once it has an id."""
        self._kept += 1
        candidate = Candidate(None, _PENDING + self._kept, record_id, grams=fp.shingles)
        claimed = [key for key in fp.bands if key not in self.owners]
        for key in claimed:
            self.owners[key] = candidate
        return candidate, claimed

    def release(self, candidate: Candidate | None = None, cleaned_id: int | None = None) -> None:
        """A kept record deleted in the batch: its band rows go with it (ON DELETE CASCADE)."""
        gone = [k for k, c in self.owners.items() if c is candidate or (cleaned_id and c.cleaned_id == cleaned_id)]
        for key in gone:
            del self.owners[key]
