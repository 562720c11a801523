"""Deterministic decision agents (not built yet).

Will own: fraud scoring (LightGBM exported to ONNX), sanctions screening,
compliance rules, routing and verdict fusion.  Every agent is a pure function
of (transfer, replicated ledger state at the parent height, pinned artifact)
returning integer verdicts, so every replica can re-run it and compare.
"""
