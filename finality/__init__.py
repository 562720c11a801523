"""The finalization path (not built yet).

Will own: the agent gate, execution of ordered blocks against the ledger,
finality levels (PROVISIONAL, FINAL, ANCHORED) and the exposure limit that
bounds provisional value while the cluster runs in Raft fallback mode.
"""
