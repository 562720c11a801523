"""TLA+ specifications of the consensus protocols and the runner that model-checks them.

The specs (``*.tla``) and their models (``models/*.cfg``) are documented in
``proofs/README.md``; ``python -m proofs check`` runs TLC on every CI model.
"""
