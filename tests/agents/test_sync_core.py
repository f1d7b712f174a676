"""The agent's decisions (``discoverd.agents.sync_core``), driven directly: the documented
rules one by one, then a model of a directory, a cluster and a watch under random
interleavings, checking that the two sides converge and that no content is ever lost."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from discoverd.agents.files import Content
from discoverd.agents.sync_core import UNKNOWN, DocState, Note, Pending, SyncCore, WriteFile


def c(v: object) -> Content:
    return Content.of({"v": v})


def events(actions: list[object]) -> list[str]:
    return [a.event for a in actions if isinstance(a, Note)]


def writes(actions: list[object]) -> list[WriteFile]:
    return [a for a in actions if isinstance(a, WriteFile)]


def online_core(**kw: bool) -> SyncCore:
    core = SyncCore(push=kw.get("push", True), pull=kw.get("pull", True),
                    delete=kw.get("delete", False))
    core.listing({}, 1)
    return core


def test_a_new_file_is_pending_against_the_absent_document() -> None:
    core = online_core()
    assert core.local("app", c(1)) == []
    ((name, p),) = core.pending()
    assert (name, p.content, p.base) == ("app", c(1), 0)
    assert events(core.pushed("app", p, 5)) == ["agent.pushed"]
    assert core.pending() == []
    assert core.states["app"].remote_rev == 5
    # The watch then shows our own write: nothing to do.
    assert core.remote("app", c(1), 5, 5) == []
    # A reformatted file (same digest) is no change.
    assert core.local("app", Content(b'{ "v" : 1 }', c(1).digest)) == []
    assert core.pending() == []


def test_a_pulled_write_is_not_pushed_back() -> None:
    core = online_core()
    (w,) = writes(core.remote("db", c("x"), 3, 3))
    assert (w.name, w.content, w.keep) == ("db", c("x"), False)
    assert core.local("db", c("x")) == []  # the watcher seeing the agent's own write
    assert core.pending() == []


def test_offline_edit_with_unchanged_remote_is_pushed_with_its_base() -> None:
    core = online_core()
    core.remote("a", c(1), 3, 3)
    core.local("a", c(2))  # no answer from the cluster meanwhile
    ((_, p),) = core.pending()
    assert p.base == 3
    # The cluster comes back; its listing shows "a" unchanged: still pending, no conflict.
    assert core.listing({"a": (c(1), 3)}, 9) == []
    assert core.pending() == [("a", p)]


def test_both_sides_changed_the_cluster_wins_and_the_local_version_is_kept() -> None:
    core = online_core()
    core.remote("b", c(1), 3, 3)
    core.local("b", c("local"))
    actions = core.listing({"b": (c("remote"), 7)}, 9)
    assert events(actions) == ["agent.conflict"]
    (w,) = writes(actions)
    assert (w.content, w.keep, w.tag) == (c("remote"), True, "r7")  # the winner's revision
    assert core.pending() == []
    st = core.states["b"]
    assert st.local == st.synced == c("remote").digest


def test_the_same_edit_on_both_sides_is_no_conflict() -> None:
    core = online_core()
    core.remote("b", c(1), 3, 3)
    core.local("b", c(2))
    assert core.remote("b", c(2), 8, 8) == []
    assert core.pending() == []


def test_a_remote_delete_of_a_locally_edited_document_wins_and_keeps_the_file_content(
) -> None:
    core = online_core()
    core.remote("b", c(1), 3, 3)
    core.local("b", c(2))
    actions = core.remote("b", None, 0, 6)
    assert events(actions) == ["agent.conflict"]
    (w,) = writes(actions)
    assert (w.content, w.keep) == (None, True)


def test_first_run_with_pull_the_cluster_wins_push_only_the_directory_wins() -> None:
    both = SyncCore(push=True, pull=True, delete=False)
    both.local("app", c("mine"))
    assert both.pending()[0][1].base == UNKNOWN
    actions = both.listing({"app": (c("theirs"), 4)}, 4)
    assert events(actions) == ["agent.conflict"]
    assert writes(actions)[0].keep
    push_only = SyncCore(push=True, pull=False, delete=False)
    push_only.local("app", c("mine"))
    assert push_only.listing({"app": (c("theirs"), 4)}, 4) == []
    assert push_only.pending()[0][1].base == 4
    # A first-run file whose document does not exist is simply pushed.
    fresh = SyncCore(push=True, pull=True, delete=False)
    fresh.local("new", c(1))
    assert fresh.listing({}, 4) == []
    assert fresh.pending()[0][1].base == 0


def test_removing_a_file_keeps_the_document_unless_delete() -> None:
    core = online_core()
    core.remote("a", c(1), 3, 3)
    assert events(core.local("a", None)) == ["agent.kept"]
    assert core.pending() == []
    deleting = online_core(delete=True)
    deleting.remote("a", c(1), 3, 3)
    deleting.local("a", None)
    ((_, p),) = deleting.pending()
    assert (p.content, p.base) == (None, 3)
    assert events(deleting.pushed("a", p, 9)) == ["agent.deleted"]
    assert deleting.states["a"].remote is None


def test_a_refused_document_is_not_retried_until_the_file_changes() -> None:
    core = online_core()
    core.remote("a", c(1), 3, 3)
    core.local("a", c("bad"))
    ((_, p),) = core.pending()
    assert events(core.refused("a", p, "no", ["/v: no"])) == ["agent.rejected"]
    assert core.pending() == []
    assert core.local("a", c("bad")) == []
    # The cluster changes meanwhile: the author's refused file is kept aside.
    (w,) = writes(core.remote("a", c(2), 5, 5))
    assert w.keep


def test_pull_only_never_pushes_and_keeps_local_edits_it_replaces() -> None:
    core = online_core(push=False)
    core.remote("a", c(1), 3, 3)
    assert events(core.local("a", c("edit"))) == ["agent.local_change_not_pushed"]
    assert core.pending() == []
    (w,) = writes(core.remote("a", c(2), 5, 5))
    assert w.keep


def test_startup_restores_a_missing_file_from_the_last_known_copy() -> None:
    core = online_core(push=False)
    core.remote("a", c(1), 3, 3)
    restarted = SyncCore(push=False, pull=True, delete=False,
                         states={"a": DocState.from_obj(core.states["a"].to_obj())},
                         observed=True)
    actions = restarted.local("a", None, startup=True)
    assert events(actions) == ["agent.restored"]
    assert writes(actions)[0].content == c(1)


def test_state_round_trips_with_its_pending_change() -> None:
    st = DocState(remote_rev=4, remote=c(1), local=c(2).digest, synced=c(1).digest,
                  pending=Pending(c(2), 4))
    again = DocState.from_obj(st.to_obj())
    assert again == st
    deleting = DocState(remote_rev=4, remote=c(1), local=None, pending=Pending(None, 4))
    assert DocState.from_obj(deleting.to_obj()) == deleting


def test_a_late_push_answer_does_not_move_the_remote_revision_back() -> None:
    core = online_core()
    core.local("a", c(1))
    ((_, p),) = core.pending()
    core.remote("a", c(1), 5, 5)  # our write, seen through the watch first
    core.remote("a", c(2), 8, 8)  # then somebody else's
    core.pushed("a", p, 5)
    assert core.states["a"].remote_rev == 8


# ------------------------------------------------------------------------ the model


NAMES = ("a", "b")


@dataclass
class World:
    """A directory, a cluster with a watch stream, and the agent's core between them."""

    core: SyncCore
    directory: dict[str, Content] = field(default_factory=dict)
    cluster: dict[str, tuple[Content, int]] = field(default_factory=dict)
    revision: int = 1
    stream: list[tuple[str, Content | None, int, int]] = field(default_factory=list)
    ever_in_cluster: set[str] = field(default_factory=set)
    copies: list[Content] = field(default_factory=list)
    online: bool = True
    notes: list[str] = field(default_factory=list)

    def carry_out(self, actions: list[object]) -> None:
        for a in actions:
            if isinstance(a, Note):
                self.notes.append(a.event)
            if not isinstance(a, WriteFile):
                continue
            old = self.directory.get(a.name)
            unexpected = (old.digest if old else None) != a.replaces
            if old is not None and (a.keep or unexpected):
                self.copies.append(old)
            elif old is not None:
                # Replaced without a copy: the cluster must have (had) this content.
                assert old.digest in self.ever_in_cluster, (a, old)
            if a.content is None:
                self.directory.pop(a.name, None)
            else:
                self.directory[a.name] = a.content

    def cluster_write(self, name: str, content: Content | None) -> int:
        self.revision += 1
        if content is None:
            self.cluster.pop(name, None)
            self.stream.append((name, None, 0, self.revision))
        else:
            self.cluster[name] = (content, self.revision)
            self.ever_in_cluster.add(content.digest)
            self.stream.append((name, content, self.revision, self.revision))
        return self.revision

    def push_one(self, *, lose_answer: bool) -> None:
        pending = self.core.pending()
        if not pending or not self.online:
            return
        name, p = pending[0]
        current = self.cluster.get(name)
        if (current[1] if current else 0) == p.base:
            rev = self.cluster_write(name, p.content)
            if not lose_answer:
                self.carry_out(self.core.pushed(name, p, rev))
        else:
            self.carry_out(self.core.remote(name, current[0] if current else None,
                                            current[1] if current else 0, self.revision))

    def deliver_one(self) -> None:
        if self.stream and self.online:
            self.carry_out(self.core.remote(*self.stream.pop(0)))

    def local(self, name: str, content: Content | None) -> None:
        if content is None:
            self.directory.pop(name, None)
        else:
            self.directory[name] = content
        self.carry_out(self.core.local(name, content))


OPS = st.lists(st.tuples(
    st.sampled_from(["edit", "rm", "remote_put", "remote_rm", "push", "push_lost",
                     "deliver", "offline", "online"]),
    st.sampled_from(NAMES), st.integers(0, 3)), max_size=40)


@settings(max_examples=int(os.environ.get("DISCOVERD_AGENT_EXAMPLES", "400")), deadline=None)
@given(OPS, st.booleans(), st.booleans())
def test_directory_and_cluster_converge_and_nothing_is_lost(
        ops: list[tuple[str, str, int]], delete: bool, other_writers: bool) -> None:
    """With or without other writers in the cluster; without them, whatever the outages and
    lost answers, there is never a conflict (the agent's own writes never look foreign)."""
    if not other_writers:
        ops = [o for o in ops if not o[0].startswith("remote_")]
    world = World(SyncCore(push=True, pull=True, delete=delete))
    world.carry_out(world.core.listing({}, 1))
    for op, name, v in ops:
        if op == "edit":
            world.local(name, c(v))
        elif op == "rm":
            world.local(name, None)
        elif op == "remote_put":
            world.cluster_write(name, c(f"r{v}"))
        elif op == "remote_rm" and name in world.cluster:
            world.cluster_write(name, None)
        elif op in ("push", "push_lost"):
            world.push_one(lose_answer=op == "push_lost")
        elif op == "deliver":
            world.deliver_one()
        else:
            world.online = op == "online"
    world.online = True
    for _ in range(200):
        if not world.stream and not world.core.pending():
            break
        world.deliver_one()
        world.push_one(lose_answer=False)
    assert not world.stream
    assert not world.core.pending()
    for n in NAMES:
        here = world.directory.get(n)
        there = world.cluster.get(n)
        if here is None and there is not None and not delete:
            continue  # a removed file keeps its document (no --delete): documented
        assert (here.digest if here else None) == (there[0].digest if there else None), n
    if not other_writers:
        assert "agent.conflict" not in world.notes
        assert world.copies == []
