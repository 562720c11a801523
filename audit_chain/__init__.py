"""The audit chain.

Built so far: RFC 9162 Merkle tree hashing (``merkle``), used by block headers.
Still to come: inclusion and consistency proofs, signed checkpoints, the
offline verifier, and ``anchor/`` adapters (embedded store, Hyperledger Fabric).
"""
