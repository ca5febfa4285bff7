"""Values stored under string prefixes, found by walking one key's characters.

A compressed trie (radix tree): each edge is labelled with a run of
characters, and every node but the root either holds values or forks, so the
tree has at most about two nodes per distinct prefix. Finding the values
whose prefix starts a key visits at most len(key) + 1 nodes, however many
prefixes are stored; removing the last value of a prefix takes its nodes out.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")


class _Node(Generic[V]):
    __slots__ = ("children", "label", "values")

    def __init__(self, label: str) -> None:
        # The characters on the edge into this node (empty for the root).
        self.label = label
        # Keyed by the first character of the child's label.
        self.children: dict[str, _Node[V]] = {}
        self.values: dict[Hashable, V] = {}


class PrefixTree(Generic[V]):
    def __init__(self) -> None:
        self._root: _Node[V] = _Node("")

    def add(self, prefix: str, token: Hashable, value: V) -> None:
        """Stores `value` under `prefix`; `token` names it for `remove`."""
        node, at = self._root, 0
        while at < len(prefix):
            child = node.children.get(prefix[at])
            if child is None:
                child = _Node(prefix[at:])
                node.children[prefix[at]] = child
                node = child
                break
            shared = _shared_length(child.label, prefix, at)
            if shared < len(child.label):
                child = self._split(node, child, shared)
            node, at = child, at + shared
        node.values[token] = value

    def remove(self, prefix: str, token: Hashable) -> bool:
        """Takes the value stored as `token` under `prefix` out; False if there was none."""
        trail: list[tuple[_Node[V], _Node[V]]] = []
        node, at = self._root, 0
        while at < len(prefix):
            child = node.children.get(prefix[at])
            if child is None or not prefix.startswith(child.label, at):
                return False
            trail.append((node, child))
            node, at = child, at + len(child.label)
        if token not in node.values:
            return False
        del node.values[token]
        # Only the last node and its parent can have lost what kept them.
        for parent, child in reversed(trail[-2:]):
            self._tidy(parent, child)
        return True

    def path(self, key: str) -> Iterator[_Node[V]]:
        """The nodes whose prefixes start `key`, root first: a lookup's whole walk."""
        node, at = self._root, 0
        yield node
        while at < len(key):
            child = node.children.get(key[at])
            if child is None or not key.startswith(child.label, at):
                return
            node, at = child, at + len(child.label)
            yield node

    def matching(self, key: str) -> list[V]:
        """Every value whose prefix starts `key` (shorter prefixes first)."""
        return [value for node in self.path(key) for value in node.values.values()]

    def node_count(self) -> int:
        return sum(1 for _ in self._nodes())

    def value_count(self) -> int:
        return sum(len(node.values) for node in self._nodes())

    def _nodes(self) -> Iterator[_Node[V]]:
        pending = [self._root]
        while pending:
            node = pending.pop()
            yield node
            pending.extend(node.children.values())

    @staticmethod
    def _split(parent: _Node[V], child: _Node[V], at: int) -> _Node[V]:
        """Puts a node between `parent` and `child` after the first `at` characters of the edge."""
        middle: _Node[V] = _Node(child.label[:at])
        child.label = child.label[at:]
        middle.children[child.label[0]] = child
        parent.children[middle.label[0]] = middle
        return middle

    @staticmethod
    def _tidy(parent: _Node[V], node: _Node[V]) -> None:
        """Removes a node that neither holds values nor forks, or merges it into its one child."""
        if node.values or len(node.children) > 1:
            return
        if not node.children:
            del parent.children[node.label[0]]
            return
        (only,) = node.children.values()
        only.label = node.label + only.label
        parent.children[node.label[0]] = only


def _shared_length(label: str, key: str, start: int) -> int:
    """How many characters of `label` equal `key` from `start` on."""
    limit = min(len(label), len(key) - start)
    shared = 0
    while shared < limit and label[shared] == key[start + shared]:
        shared += 1
    return shared
