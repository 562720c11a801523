"""The audit chain (not built yet).

Will own: RFC 9162 Merkle trees with inclusion and consistency proofs, block
headers chained by hash, checkpoints signed by a quorum of replicas, the
offline verifier, and ``anchor/`` adapters (embedded store, Hyperledger Fabric).
"""
