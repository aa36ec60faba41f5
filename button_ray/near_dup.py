"""Run-wide near-duplicate detection: MinHash signatures and LSH banding over numpy arrays.

Two kinds of text are checked (:class:`DuplicateCheck`): a record's composite task and
its whole dialogue (:func:`dialogue_text`). The writers hash (:class:`Signer`), the
driver only looks the signatures up.

A text is reduced to the set of its word ``shingle``-grams (tokens as in
:func:`button_ray.quality.tokens`); MinHash estimates the Jaccard similarity of two such
sets from ``num_perm`` hash minima. LSH splits each signature into ``bands`` bands: two
texts become candidates when one band is equal, and a candidate counts as a duplicate
when its estimated similarity is at least ``threshold``.

Memory is small and fixed per indexed text, and bounded by ``capacity``: per text, one
16-bit hash per permutation (b-bit MinHash: the estimate only loses ``2**-16`` to
collisions), one 64-bit key per band in a sorted array, and the text's id. Past
``capacity`` texts, new texts are still checked against the indexed ones but no longer
added. No Python object is kept per text, so a run of millions of records stays within
a few hundred MiB (``benchmarks/bench_near_dup.py`` measures it).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from button_ray.config import ContentConfig
from button_ray.quality import tokens

_PRIME = np.uint64(4294967291)  # the largest prime below 2**32
#: Band keys held in a dict before they are merged into the sorted arrays: few enough to
#: be a fixed amount of memory, many enough that merges (linear in the index) are rare.
_BUFFER = 1 << 15
#: Texts compared per shared band key, the newest first. Texts from one template share
#: bands by the thousand; comparing them all made each check grow with the run (0.05 ms
#: per text at 10k texts, 0.3 ms at 60k). A duplicate of an older text is still found
#: through its other bands, unless every one of them is that common.
_PER_KEY = 32
#: Longest id kept (bytes of UTF-8); a record id is 16.
_ID_BYTES = 32


def _shingle_hashes(text: str, shingle: int) -> np.ndarray:
    toks = tokens(text)
    grams = {" ".join(toks[i : i + shingle]) for i in range(max(1, len(toks) - shingle + 1))}
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "little") for g in grams),
        dtype=np.uint64,
        count=len(grams),
    )


class Match(NamedTuple):
    """The indexed text a new one nearly duplicates."""

    kept_id: str
    similarity: float


class MinHasher:
    """MinHash signatures of texts: the same ``num_perm``, ``shingle`` and ``seed`` give the
    same signatures in every process, so the writers compute them and the driver only
    looks them up (:class:`DuplicateCheck`)."""

    def __init__(self, num_perm: int = 64, shingle: int = 3, seed: int = 0) -> None:
        self.num_perm, self.shingle = num_perm, shingle
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, int(_PRIME), num_perm, dtype=np.uint64)
        self._b = rng.integers(0, int(_PRIME), num_perm, dtype=np.uint64)

    def signature(self, text: str) -> np.ndarray:
        """The MinHash signature of ``text`` (``num_perm`` values below 2**32)."""
        hashes = _shingle_hashes(text, self.shingle)
        # (a*x + b) mod p over every permutation and shingle: a, x < 2**32, so a*x fits in 64 bits.
        values = (np.outer(self._a, hashes) + self._b[:, None]) % _PRIME
        return values.min(axis=1)

    def encoded(self, text: str) -> str:
        """:meth:`signature` as short text (base64 of 32-bit values), for an outcome record."""
        return base64.b64encode(self.signature(text).astype("<u4").tobytes()).decode("ascii")


def decode_signature(encoded: str) -> np.ndarray:
    """A signature from :meth:`MinHasher.encoded`."""
    return np.frombuffer(base64.b64decode(encoded), dtype="<u4").astype(np.uint64)


class NearDuplicateIndex:
    """Keep-first near-duplicate detection over a stream of ``(id, text)`` or ``(id, signature)``."""

    def __init__(
        self, threshold: float, num_perm: int = 64, bands: int = 16, shingle: int = 3,
        capacity: int = 1_000_000, seed: int = 0,
    ) -> None:  # fmt: skip
        if num_perm % bands:
            raise ValueError(f"num_perm ({num_perm}) must be a multiple of bands ({bands})")
        self.threshold, self.bands, self.capacity = threshold, bands, capacity
        self.hasher = MinHasher(num_perm, shingle, seed)
        rng = np.random.default_rng(seed + 1)
        self._salt = rng.integers(0, 1 << 63, bands, dtype=np.uint64)
        self._sigs = np.empty((0, num_perm), dtype=np.uint16)
        self._ids = np.empty(0, dtype=f"S{_ID_BYTES}")
        self._keys = np.empty(0, dtype=np.uint64)
        self._slots = np.empty(0, dtype=np.int32)
        # The newest band keys, until _BUFFER of them are merged into the sorted arrays.
        self._buffer: dict[int, list[int]] = {}
        self._buffered = 0
        self.size = 0

    def band_keys(self, signature: np.ndarray) -> np.ndarray:
        """One 64-bit LSH key per band of ``signature``."""
        rows = signature.reshape(self.bands, -1).astype(np.uint64)
        # One 64-bit key per band, salted by the band's index so equal rows of different
        # bands do not collide.
        keys = self._salt.copy()
        for column in rows.T:
            keys = (keys ^ column) * np.uint64(0x100000001B3)
        return keys

    def _candidates(self, keys: np.ndarray) -> np.ndarray:
        # A Python set, not np.unique: a handful of slots per text, where numpy's per-call
        # cost dominates (this runs once per emitted item on the driver).
        found: set[int] = set()
        if len(self._keys):
            pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
            hit = self._keys[pos] == keys
            if hit.any():
                # Several texts may share a band key: the newest _PER_KEY of the equal run
                # (slots grow with insertion, and merges keep equal keys in that order).
                for p in pos[hit].tolist():
                    end = int(np.searchsorted(self._keys, self._keys[p], side="right"))
                    found.update(self._slots[max(p, end - _PER_KEY):end].tolist())
        for key in keys.tolist():
            found.update(self._buffer.get(key, ())[-_PER_KEY:])
        return np.fromiter(found, dtype=np.int32, count=len(found))

    def add(self, record_id: str, text: str) -> Match | None:
        """The kept text ``text`` nearly duplicates, or None: then ``text`` is kept (indexed
        while the index holds fewer than ``capacity`` texts)."""
        signature = self.hasher.signature(text)
        keys = self.band_keys(signature)
        match = self.match(signature, keys)
        if match is None:
            self.keep(record_id, signature, keys)
        return match

    def match(self, signature: np.ndarray, keys: np.ndarray) -> Match | None:
        """The most similar indexed text at or above the threshold to the text of
        ``signature`` (its :meth:`band_keys` are ``keys``), or None; nothing is kept."""
        candidates = self._candidates(keys)
        if not len(candidates):
            return None
        agree = (self._sigs[candidates] == (signature & 0xFFFF).astype(np.uint16)).mean(axis=1)
        best = int(np.argmax(agree))
        if agree[best] < self.threshold:
            return None
        return Match(self._ids[candidates[best]].decode(), float(agree[best]))

    def keep(self, record_id: str, signature: np.ndarray, keys: np.ndarray) -> None:
        """Index a text found to be no duplicate (by :meth:`match`)."""
        self._insert(record_id, signature, keys)

    def _insert(self, record_id: str, signature: np.ndarray, keys: np.ndarray) -> None:
        if self.size >= self.capacity:
            return
        slot = self.size
        if slot == len(self._sigs):
            grow = min(max(1024, len(self._sigs)), self.capacity - slot)
            self._sigs = np.concatenate([self._sigs, np.empty((grow, self._sigs.shape[1]), dtype=np.uint16)])
            self._ids = np.concatenate([self._ids, np.empty(grow, dtype=self._ids.dtype)])
        self._sigs[slot] = (signature & 0xFFFF).astype(np.uint16)
        self._ids[slot] = record_id.encode()[:_ID_BYTES]
        for key in keys.tolist():
            self._buffer.setdefault(key, []).append(slot)
        self._buffered += self.bands
        self.size += 1
        if self._buffered >= _BUFFER:
            self._merge()

    def _merge(self) -> None:
        pairs = [(key, slot) for key, slots in self._buffer.items() for slot in slots]
        new_keys = np.fromiter((k for k, _ in pairs), dtype=np.uint64, count=len(pairs))
        new_slots = np.fromiter((v for _, v in pairs), dtype=np.int32, count=len(pairs))
        keys = np.concatenate([self._keys, new_keys])
        slots = np.concatenate([self._slots, new_slots])
        # A sorted run plus a short one: the stable sort (timsort) merges them in about linear time.
        order = np.argsort(keys, kind="stable")
        self._keys, self._slots = keys[order], slots[order]
        self._buffer.clear()
        self._buffered = 0

    def nbytes(self) -> int:
        """Bytes held by the index's arrays (the bounded buffer of recent keys not counted)."""
        return sum(a.nbytes for a in (self._sigs, self._ids, self._keys, self._slots))


def dialogue_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text a whole dialogue is compared by: every message but the system prompt, whose
    function list many dialogues share."""
    return "\n".join(str(m.get("content") or "") for m in messages if m.get("role") != "system")


def _index(cfg: ContentConfig, threshold: float | None) -> NearDuplicateIndex | None:
    if threshold is None:
        return None
    return NearDuplicateIndex(threshold, num_perm=cfg.near_duplicate_permutations, bands=cfg.near_duplicate_bands,
                              capacity=cfg.near_duplicate_capacity)


def index_for(cfg: ContentConfig) -> NearDuplicateIndex | None:
    """The composite-task index ``cfg`` asks for, or None when that check is off."""
    return _index(cfg, cfg.near_duplicate_threshold)


#: What a record is compared by, in the order the run-wide check tries them.
KINDS = ("task", "dialogue")


class Signer:
    """The writers' half of the run-wide check: the signatures of an emitted record, as
    short text for its outcome (``task_sig``, ``dialogue_sig``), for the kinds ``cfg``
    checks."""

    def __init__(self, cfg: ContentConfig) -> None:
        self.hasher = MinHasher(cfg.near_duplicate_permutations)
        self.kinds = [k for k, t in zip(KINDS, (cfg.near_duplicate_threshold, cfg.near_duplicate_dialogue_threshold))
                      if t is not None]

    def texts(self, task: str, messages: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """The texts of a record compared, by kind."""
        return {k: task if k == "task" else dialogue_text(messages) for k in self.kinds}

    def signatures(self, task: str, messages: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """The outcome fields of a record: ``<kind>_sig`` -> :meth:`MinHasher.encoded`."""
        return {f"{k}_sig": self.hasher.encoded(t) for k, t in self.texts(task, messages).items()}


class DuplicateCheck:
    """The run-wide near-duplicate check: an emitted record is a duplicate when its
    composite task or its whole dialogue nearly duplicates that of a record kept earlier;
    a record that is neither is kept in both indexes. Memory: each index is bounded by
    ``near_duplicate_capacity``."""

    def __init__(self, cfg: ContentConfig) -> None:
        self.signer = Signer(cfg)
        self.indexes = {"task": index_for(cfg), "dialogue": _index(cfg, cfg.near_duplicate_dialogue_threshold)}

    def check(self, record_id: str, signatures: Mapping[str, np.ndarray]) -> tuple[str, Match] | None:
        """(kind, the kept record it nearly duplicates) for a record's signatures by kind,
        or None: then the record is kept."""
        keys = {kind: self.indexes[kind].band_keys(signatures[kind]) for kind in self.signer.kinds}
        for kind in self.signer.kinds:
            match = self.indexes[kind].match(signatures[kind], keys[kind])
            if match is not None:
                return kind, match
        for kind in self.signer.kinds:
            self.indexes[kind].keep(record_id, signatures[kind], keys[kind])
        return None

    def check_outcome(self, record_id: str, outcome: Mapping[str, Any]) -> tuple[str, Match] | None:
        """:meth:`check` with the signatures a writer put in ``outcome``."""
        return self.check(record_id, {k: decode_signature(outcome[f"{k}_sig"]) for k in self.signer.kinds})

    def check_texts(self, record_id: str, task: str, messages: Sequence[Mapping[str, Any]]) -> tuple[str, Match] | None:
        """:meth:`check` from the texts (a resume, ``button-ray filter``)."""
        texts = self.signer.texts(task, messages)
        return self.check(record_id, {k: self.signer.hasher.signature(t) for k, t in texts.items()})

    def nbytes(self) -> int:
        """Bytes held by the indexes' arrays."""
        return sum(i.nbytes() for i in self.indexes.values() if i is not None)


def signer_for(cfg: ContentConfig) -> Signer | None:
    """The writers' half of the check ``cfg`` asks for, or None when both kinds are off."""
    signer = Signer(cfg)
    return signer if signer.kinds else None


def check_for(cfg: ContentConfig) -> DuplicateCheck | None:
    """The run-wide check ``cfg`` asks for, or None when both kinds are off."""
    return DuplicateCheck(cfg) if signer_for(cfg) is not None else None
