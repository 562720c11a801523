"""Deterministic network simulator (not built yet).

Will own: a virtual clock, a faulty network and disk, Byzantine replicas,
the safety and liveness checkers, named scenarios and the seed fuzzer.  It
drives the same core objects as ``node/`` under one seeded PRNG.
"""
