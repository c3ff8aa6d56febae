"""The RFC 9162 Merkle tree under checkpoints and receipts: the roots of the
certificate-transparency test vectors, the recursive definition for every size, and
inclusion proofs that verify for every leaf and fail for any other."""

from __future__ import annotations

import hashlib

import pytest

from worker.journal import merkle

#: The leaves and roots of certificate-transparency's own Merkle tree tests
#: (RFC 6962 / 9162 hash the same way).
CT_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def reference_mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 written out recursively, as the RFC states it."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + reference_mth(leaves[:k]) + reference_mth(leaves[k:])
                          ).digest()


def leaves_of(n: int) -> list[bytes]:
    return [hashlib.sha256(str(i).encode()).digest() for i in range(n)]


@pytest.mark.parametrize("size", range(1, 9))
def test_the_roots_of_the_certificate_transparency_vectors(size: int) -> None:
    # Given the first ``size`` leaves of CT's test vectors
    # When their tree hash is computed
    # Then it is CT's root for that size
    assert merkle.tree_hash(CT_LEAVES[:size]).hex() == CT_ROOTS[size - 1]


def test_the_root_is_the_recursive_definition_for_every_size() -> None:
    # Given trees of 0 to 70 leaves (every shape of split up to there)
    for n in range(71):
        # Then the level-by-level computation gives the RFC's recursive root
        assert merkle.tree_hash(leaves_of(n)) == reference_mth(leaves_of(n)), n


def test_every_leaf_has_a_proof_that_verifies_and_proves_nothing_else() -> None:
    for n in (1, 2, 3, 5, 8, 13, 33):
        leaves = leaves_of(n)
        root = merkle.tree_hash(leaves)
        for index in range(n):
            # Given the proof of one leaf
            path = merkle.inclusion_proof(leaves, index)
            # Then it leads to the root from that leaf at that index, in log2(n) steps
            assert merkle.verify_inclusion(leaves[index], index, n, path, root)
            assert len(path) <= max(1, (n - 1).bit_length())
            # and not from another leaf or another index (the tree size is bound by the
            # checkpoint, which a receipt's verifier checks separately)
            other = (index + 1) % n
            if n > 1:
                assert not merkle.verify_inclusion(leaves[other], index, n, path, root)
                assert not merkle.verify_inclusion(leaves[index], other, n, path, root)


def test_a_proof_with_a_changed_sibling_fails() -> None:
    # Given a valid proof in a tree of 10
    leaves = leaves_of(10)
    root = merkle.tree_hash(leaves)
    path = merkle.inclusion_proof(leaves, 6)
    # When one sibling hash has one bit flipped
    path[1] = bytes([path[1][0] ^ 1]) + path[1][1:]
    # Then it no longer proves the leaf
    assert not merkle.verify_inclusion(leaves[6], 6, 10, path, root)


def test_an_index_outside_the_tree_has_no_proof() -> None:
    # Given a tree of three leaves
    # Then leaf 3 has no proof, and no path leads from it to a root
    with pytest.raises(ValueError, match="not in a tree of 3"):
        merkle.inclusion_proof(leaves_of(3), 3)
    assert merkle.root_from_inclusion(b"x" * 32, 5, 3, []) is None
