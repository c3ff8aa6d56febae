"""RFC 9162 (Certificate Transparency 2.0) Merkle trees over audit record hashes.

A signed checkpoint commits to the records it covers through one root hash, so that
one record can later be proven part of it with log2(n) hashes (an inclusion proof)
instead of all n: that is what makes a receipt small and checkable offline. The tree
is exactly RFC 9162 §2.1.1 so that any CT library, or twenty lines in any language,
recomputes it:

    MTH({})      = SHA-256()
    MTH({d0})    = SHA-256(0x00 ‖ d0)
    MTH(D[n])    = SHA-256(0x01 ‖ MTH(D[0:k]) ‖ MTH(D[k:n]))   k = largest power of 2 < n

Each leaf's input ``d`` is the 32 raw bytes of one record's ``hash`` (not its hex).
Inclusion proofs are generated per §2.1.3.1 and verified per §2.1.3.2.

Examples:
    >>> leaves = [bytes([i]) * 32 for i in range(5)]
    >>> root = tree_hash(leaves)
    >>> all(verify_inclusion(leaves[i], i, 5, inclusion_proof(leaves, i), root)
    ...     for i in range(5))
    True
    >>> verify_inclusion(leaves[1], 2, 5, inclusion_proof(leaves, 2), root)
    False
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 ‖ data)``."""
    return hashlib.sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 ‖ left ‖ right)``."""
    return hashlib.sha256(_NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def tree_hash(leaves: Sequence[bytes]) -> bytes:
    """``MTH(leaves)``: the root of the tree over ``leaves`` in order.

    Computed bottom-up level by level (an odd node is carried up unchanged), which
    gives the same root as the recursive definition and needs no recursion depth.
    """
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = [leaf_hash(d) for d in leaves]
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """``PATH(index, leaves)`` (RFC 9162 §2.1.3.1): the sibling hashes from the leaf up."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf {index} is not in a tree of {len(leaves)}")
    path: list[bytes] = []
    low, high = 0, len(leaves)  # the subtree [low, high) that holds ``index``
    stack: list[bytes] = []
    while high - low > 1:
        k = _split(high - low)
        if index - low < k:
            stack.append(tree_hash(leaves[low + k:high]))
            high = low + k
        else:
            stack.append(tree_hash(leaves[low:low + k]))
            low += k
    path.extend(reversed(stack))
    return path


def root_from_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes]
                        ) -> bytes | None:
    """The root that ``path`` leads to from ``leaf`` at ``index`` in a tree of ``size``
    (RFC 9162 §2.1.3.2), or None when the path cannot belong to such a tree."""
    if not 0 <= index < size:
        return None
    fn, sn = index, size - 1
    r = leaf_hash(leaf)
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
                     ) -> bool:
    """Whether ``path`` proves ``leaf`` is leaf ``index`` of the tree of ``size`` with
    root ``root``."""
    return root_from_inclusion(leaf, index, size, path) == root
