"""The task tokens this process holds, and where any long piece of one sits in a text.

Every redaction (log lines, spans, stderr, a failure's cause, a dead-letter detail) asks
this registry, so a line that does not know which task it is about (another thread's, an
asyncio "Task exception was never retrieved", a library's stderr) is caught as well as the
task's own.  A token is held from the moment its message is parsed until the message's
attempt ends, and then stays known for the last ``RECENT`` released tokens: a handler's
orphaned task or thread can write after its message has settled.

Matching is by content, not by spelling: a text is searched for any run of a held token's
own characters, ``MIN_RUN`` long or longer.  The index keeps one ``GRAM``-char piece of
each token every ``STEP`` characters, so any common run of ``GRAM + STEP - 1`` characters
contains one indexed piece whole: about ``len(token) / 8`` dict entries per token, instead
of one per character.  A hit is then confirmed against the tokens and widened to the whole
common run.  A token's pieces are cut only when a text first has a run of the tokens'
characters long enough to look up: the one line most tasks write has none (its message id
and short words), so a token released before such a line costs a dict entry, not its
pieces.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable
from typing import Final

__all__ = [
    "GRAM",
    "MIN_RUN",
    "STEP",
    "Index",
    "hold",
    "index_of",
    "release",
    "token_ref",
]

GRAM: Final = 12
STEP: Final = 8
#: The shortest run of a token's characters that is always found (19); shorter tokens
#: are not indexed (they are matched whole, by spelling, in their own message's lines).
MIN_RUN: Final = GRAM + STEP - 1
#: Released tokens still matched: a late line about a settled message.
RECENT: Final = 1024
#: Held tokens indexed at most: the index takes about 8 KB per token of Step Functions'
#: length once its pieces are cut, so this bounds it near 75 MB.  Past it the oldest stop
#: being indexed and are caught in their own message's lines only.
MAX_HELD: Final = 8192


def token_ref(token: str) -> str:
    """A short, stable, non-reversible reference to a token, safe for logs and errors.

    A hash rather than a prefix: token prefixes are shared by every task of an
    execution, so a prefix would neither identify the task nor be safe to publish.
    """
    digest = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
    return f"tok:{digest}"


class Index:
    """Tokens, their sampled pieces, and a pattern for runs of their characters."""

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        #: How many indexed tokens hold each piece (tokens of one execution share a prefix).
        self.grams: Counter[str] = Counter()
        #: Each token with the pieces it added (None: not indexed yet).
        self.tokens: dict[str, list[str] | None] = {}
        #: Tokens added since the pieces were last brought up to date.  Indexing waits
        #: for the first text that has a run of the tokens' characters: most tasks write
        #: none (ids and short words), and a token released before then costs nothing.
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._chars: set[str] = set()
        self.runs: re.Pattern[str] | None = None
        for token in tokens:
            self.add(token)

    def add(self, token: str) -> None:
        with self._lock:
            if token in self.tokens:
                return
            self.tokens[token] = None
            self._pending.append(token)
            if len(self._pending) > 2 * len(self.tokens) + 64:
                # Released before any text asked: forget them (amortised, bounded).
                self._pending = [t for t in self._pending if t in self.tokens]
            # The pattern's check is a C loop; the set's only when a character may be new.
            fits = self.runs is not None and self.runs.fullmatch(token) is not None
            if not fits and not self._chars.issuperset(token):
                self._chars.update(token)
                alphabet = "".join(sorted(re.escape(c) for c in self._chars if not c.isspace()))
                self.runs = re.compile(f"[{alphabet}]{{{MIN_RUN},}}")

    def remove(self, token: str) -> None:
        with self._lock:
            counts = self.grams
            for gram in self.tokens.pop(token, None) or ():
                left = counts[gram] - 1
                if left:
                    counts[gram] = left
                else:
                    del counts[gram]

    def _index_pending(self) -> None:
        with self._lock:
            for token in self._pending:
                if token in self.tokens and self.tokens[token] is None:
                    grams = self.tokens[token] = _grams(token)
                    self.grams.update(grams)  # counted in C
            self._pending.clear()

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """Each run of ``text`` that is a piece of an indexed token, as (start, end,
        token), left to right, not overlapping; runs shorter than ``MIN_RUN`` may be
        missed."""
        runs = self.runs
        if runs is None or not self.tokens:
            return []
        found: list[tuple[int, int, str]] = []
        for run in runs.finditer(text):
            if self._pending:
                self._index_pending()
            grams = self.grams
            low, high = run.span()
            at = low
            while at <= high - GRAM:
                if text[at : at + GRAM] in grams:
                    hit = self._widen(text, at, low, high)
                    if hit is not None:
                        found.append(hit)
                        at = low = hit[1]
                        continue
                at += 1
        return found

    def _widen(self, text: str, at: int, low: int, high: int) -> tuple[int, int, str] | None:
        """The longest common run around ``text[at:at+GRAM]`` with a token holding it."""
        gram = text[at : at + GRAM]
        best: tuple[int, int, str] | None = None
        for token in list(self.tokens):  # a copy: another thread may add or remove
            where = token.find(gram)
            for _ in range(8):  # a repetitive token: try its first few occurrences
                if where < 0:
                    break
                left = _common(text, at, token, where, min(at - low, where), backwards=True)
                right = _common(text, at, token, where, min(high - at, len(token) - where))
                if best is None or right + left > best[1] - best[0]:
                    best = (at - left, at + right, token)
                where = token.find(gram, where + 1)
        return best


def _grams(token: str) -> list[str]:
    """The pieces of ``token`` an index keeps: every STEP characters, and the last."""
    end = len(token)
    if end < MIN_RUN:
        return []
    grams = [token[i : i + GRAM] for i in range(0, end - GRAM + 1, STEP)]
    if (end - GRAM) % STEP:
        grams.append(token[end - GRAM :])
    return grams


def _common(a: str, i: int, b: str, j: int, limit: int, *, backwards: bool = False) -> int:
    """How many characters ``a`` and ``b`` share from ``a[i]``/``b[j]`` on (or before them,
    ``backwards``), at most ``limit``: a binary search over slice comparisons, done in C."""
    low, high = 0, limit
    while low < high:
        mid = (low + high + 1) // 2
        same = a[i - mid : i] == b[j - mid : j] if backwards else a[i : i + mid] == b[j : j + mid]
        if same:
            low = mid
        else:
            high = mid - 1
    return low


class _Held:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: dict[str, int] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self.index = Index()

    def hold(self, token: str) -> None:
        if len(token) < MIN_RUN:
            return
        with self._lock:
            count = self._count.get(token, 0)
            self._count[token] = count + 1
            if count:
                return
            if token in self._recent:
                del self._recent[token]  # still indexed
            else:
                self.index.add(token)
            if len(self._count) > MAX_HELD:
                oldest = next(iter(self._count))
                del self._count[oldest]
                self.index.remove(oldest)

    def release(self, token: str) -> None:
        with self._lock:
            count = self._count.get(token)
            if count is None:
                return
            if count > 1:
                self._count[token] = count - 1
                return
            del self._count[token]
            self._recent[token] = None
            if len(self._recent) > RECENT:
                self.index.remove(self._recent.popitem(last=False)[0])


_held = _Held()


def hold(token: str) -> None:
    """``token`` is in this process's hands: redact it from every text until released."""
    _held.hold(token)


def release(token: str) -> None:
    """One holder of ``token`` is done with it (it stays matched for a while)."""
    _held.release(token)


def index_of() -> Index:
    """The index of the held (and recently released) tokens."""
    return _held.index
