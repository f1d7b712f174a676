"""The agent's decisions, with no I/O: given what was seen in the directory and in the
cluster, what to push, what to write, and what to say. ``agent.py`` feeds it and carries
out its actions; ``tests/agents/test_sync_core.py`` drives it directly.

Per document the core remembers (and the agent persists, so a restart resumes):

* ``remote_rev`` / ``remote``: the document in the cluster as last observed — its
  ``mod_revision`` (0: absent) and content (the last-known copy served while offline);
* ``local``: the digest of the file as last *handled* (pushed, pulled, refused or kept) —
  a file whose digest equals it is no news, which is why a pulled write is never pushed
  back and an unchanged file is never pushed again after a restart;
* ``synced``: the digest both sides last agreed on — a file holding anything else has
  content only this directory knows, and is copied aside before being replaced;
* ``pending``: a local change not yet in the cluster, with the ``base`` revision it was
  made against.

The reconciliation rule (docs/agent.md): a local change is written with a compare on its
base revision, so it lands only if the document is still as the change saw it. If the
document changed in the cluster meanwhile — both sides changed it while the agent could not
reach the cluster — **the cluster's version wins**: the local version is logged as a
conflict and, where the file is replaced, kept beside it as ``<file>.conflict-r<REV>``.
Nothing is lost either way. A change made while the agent is connected is based on the
newest revision it has seen, so it wins over every older remote change, as a user expects.

A file first seen with no record (a first run) has an unknown base: with ``pull`` it is
settled like a conflict (the cluster's copy wins if it has one, and the file is kept aside);
push-only, the directory is the source, so the file's version is written over the cluster's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from discoverd.agents.files import Content

_OURS_KEPT = 16
UNKNOWN = -1
"""A pending change's base when the agent has never observed the document in the cluster."""


@dataclass(slots=True)
class Pending:
    """A local change to write to the cluster: the new content (``None``: delete it) and the
    remote revision it was made against."""

    content: Content | None
    base: int

    @property
    def digest(self) -> str | None:
        return self.content.digest if self.content is not None else None


@dataclass(slots=True)
class DocState:
    remote_rev: int = 0
    remote: Content | None = None
    local: str | None = None
    synced: str | None = None
    pending: Pending | None = None
    ours: tuple[str | None, ...] = ()
    """Digests of the latest local versions handed to the cluster: any of them may be in it
    without the agent knowing (a push whose answer was lost), so seeing one there is seeing
    our own write, not somebody else's."""

    def to_obj(self) -> dict[str, Any]:
        def content(c: Content | None) -> list[Any] | None:
            return None if c is None else [c.value, c.digest]

        return {"remote_rev": self.remote_rev, "remote": content(self.remote),
                "local": self.local, "synced": self.synced,
                "pending": None if self.pending is None else
                [content(self.pending.content), self.pending.base], "ours": list(self.ours)}

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> DocState:
        def content(c: list[Any] | None) -> Content | None:
            return None if c is None else Content(bytes(c[0]), str(c[1]))

        pending = obj.get("pending")
        return cls(remote_rev=int(obj["remote_rev"]), remote=content(obj.get("remote")),
                   local=obj.get("local"), synced=obj.get("synced"),
                   pending=None if pending is None else Pending(content(pending[0]),
                                                                int(pending[1])),
                   ours=tuple(obj.get("ours", ())))


@dataclass(frozen=True, slots=True)
class WriteFile:
    """Write the document to its file (``content``), or remove the file (``None``).

    ``keep``: the file holds content the cluster never had — copy it aside first, as
    ``<file>.conflict-<tag>``. ``replaces`` is the digest the core believes the file holds:
    a file found holding anything else was edited after the agent last read it (within the
    debounce window), and is copied aside too."""

    name: str
    content: Content | None
    tag: str
    keep: bool = False
    replaces: str | None = None


@dataclass(frozen=True, slots=True)
class Note:
    """Something to log: ``event`` with ``fields``."""

    level: Literal["info", "warning", "error"]
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


Action = WriteFile | Note


def _digest(content: Content | None) -> str | None:
    return None if content is None else content.digest


class SyncCore:
    """See the module docstring. ``states`` is the persisted per-document record;
    ``observed`` whether a complete listing of the prefix was ever taken (until then, a
    document without a record has an unknown remote state). Every method returns the
    actions to carry out, in order; ``dirty`` collects the names whose record changed."""

    def __init__(self, *, push: bool, pull: bool, delete: bool,
                 states: dict[str, DocState] | None = None, observed: bool = False) -> None:
        self.push = push
        self.pull = pull
        self.delete = delete
        self.states: dict[str, DocState] = dict(states or {})
        self.observed = observed
        self.dirty: set[str] = set()

    def _state(self, name: str) -> DocState:
        st = self.states.get(name)
        if st is None:
            st = self.states[name] = DocState()
        self.dirty.add(name)
        return st

    def pending(self) -> list[tuple[str, Pending]]:
        """Local changes waiting to be written, by name."""
        return [(n, st.pending) for n, st in sorted(self.states.items())
                if st.pending is not None]

    # ------------------------------------------------------------------ the directory

    def local(self, name: str, content: Content | None, *, startup: bool = False
              ) -> list[Action]:
        """The file of ``name`` now holds ``content`` (``None``: there is no file).
        ``startup``: seen by the first scan after a (re)start, when a missing file may just
        not have been written yet in a new directory."""
        st = self.states.get(name)
        digest = _digest(content)
        if st is not None and st.local == digest and not (startup and content is None):
            return []
        if st is None and content is None:
            return []
        st = self._state(name)
        if content is None and startup and st.local is not None and \
                not (self.push and self.delete):
            # The directory lost a file while the agent was away (a fresh directory with
            # old state, or a removal nobody asked to propagate): serve the last-known copy.
            st.local = None
            if self.pull and st.remote is not None:
                st.local = st.synced = st.remote.digest
                return [WriteFile(name, st.remote, f"r{st.remote_rev}"),
                        Note("info", "agent.restored", {"name": name,
                                                         "revision": st.remote_rev})]
            return []
        st.local = digest
        if not self.push:
            if digest != _digest(st.remote):
                return [Note("warning", "agent.local_change_not_pushed", {
                    "name": name, "reason": "the agent runs without --push; the next "
                    "change in the cluster replaces the file (a copy is kept)"})]
            st.synced = digest
            return []
        if content is None and not self.delete:
            st.pending = None
            if st.remote is None:
                return []
            return [Note("info", "agent.kept", {
                "name": name, "reason": "the file was removed; the document stays in the "
                "cluster (run the agent with --delete to delete documents whose files are "
                "removed)"})]
        if digest == _digest(st.remote) and (st.remote is not None or self.observed):
            st.pending = None
            st.synced = digest
            return []
        st.pending = Pending(content, self._base(name, st))
        st.ours = (*st.ours, digest)[-_OURS_KEPT:]
        return []

    def _base(self, name: str, st: DocState) -> int:
        known = st.remote is not None or st.remote_rev or self.observed
        return st.remote_rev if known else UNKNOWN

    # ------------------------------------------------------------------ the cluster

    def remote(self, name: str, content: Content | None, mod_rev: int, revision: int
               ) -> list[Action]:
        """The cluster holds ``content`` for ``name`` (``None``: no document), written at
        ``mod_rev``, as of ``revision``."""
        st = self.states.get(name)
        if st is None:
            if content is None:
                return []
            st = self._state(name)
        elif st.pending is None and st.remote_rev == mod_rev and \
                _digest(st.remote) == _digest(content):
            return []
        self.dirty.add(name)
        if mod_rev < st.remote_rev and content is not None:
            return []  # older than what we know (a late answer): ignore
        st.remote_rev = mod_rev if content is not None else 0
        st.remote = content
        remote_digest = _digest(content)
        actions: list[Action] = []
        p = st.pending
        if p is not None:
            if p.digest == remote_digest:
                # Both sides agree (our own write seen through the watch, or the same edit).
                st.pending = None
                st.synced = remote_digest
                return []
            if p.base == UNKNOWN and (content is None or not self.pull):
                p.base = st.remote_rev  # nothing to lose in the cluster, or the dir rules
                return []
            if p.base == st.remote_rev:
                return []  # the cluster is where the change was made: it still applies
            if remote_digest in st.ours:
                p.base = st.remote_rev  # an earlier version of ours landed: build on it
                return []
            st.pending = None
            actions.append(Note("warning", "agent.conflict", {
                "name": name, "local_base_revision": None if p.base == UNKNOWN else p.base,
                "remote_revision": mod_rev if content is not None else revision,
                "remote_deleted": content is None,
                "resolution": "the cluster's version wins"
                + (f"; the local version is kept as <file>.conflict-r"
                   f"{mod_rev if content is not None else revision}"
                   if self.pull and st.local is not None else
                   "; the local file is left as it is" if st.local is not None else "")}))
        if self.pull:
            if remote_digest != st.local:
                keep = st.local is not None and st.local != st.synced
                tag = f"r{mod_rev if content is not None else revision}"
                actions.append(WriteFile(name, content, tag, keep, st.local))
                st.local = remote_digest
            st.synced = remote_digest
        elif remote_digest == st.local:
            st.synced = remote_digest
        return actions

    def listing(self, docs: dict[str, tuple[Content, int]], revision: int) -> list[Action]:
        """Every document of the prefix as of ``revision`` (a first listing, or one after
        the watch's history was compacted): the names not in it have no document."""
        actions: list[Action] = []
        for name in sorted(docs):
            content, mod_rev = docs[name]
            actions += self.remote(name, content, mod_rev, revision)
        for name in sorted(set(self.states) - set(docs)):
            st = self.states[name]
            if st.remote is not None or st.pending is not None:
                actions += self.remote(name, None, 0, revision)
        self.observed = True
        return actions

    # ------------------------------------------------------------------ push outcomes

    def pushed(self, name: str, pending: Pending, revision: int) -> list[Action]:
        """``pending`` is in the cluster as of ``revision``."""
        st = self._state(name)
        if revision >= st.remote_rev:
            st.remote_rev = revision if pending.content is not None else 0
            st.remote = pending.content
        if st.pending is pending:
            st.pending = None
            st.synced = pending.digest
        elif st.pending is not None:
            st.pending.base = st.remote_rev  # a newer edit, made on top of this one
        return [Note("info", "agent.pushed" if pending.content is not None else
                     "agent.deleted", {"name": name, "revision": revision})]

    def refused(self, name: str, pending: Pending, message: str,
                violations: list[str]) -> list[Action]:
        """The members refused ``pending`` (its document is invalid): the cluster keeps its
        last good version; the file is left for its author to fix."""
        st = self._state(name)
        if st.pending is pending:
            st.pending = None
        return [Note("error", "agent.rejected", {"name": name, "error": message,
                                                 "violations": violations})]
