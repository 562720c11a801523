"""Sans-IO consensus cores (not built yet).

Will own: typed protocol messages, quorum arithmetic, commit certificates,
the BFT core (``bft/``, Mod-SMaRt shape), the Raft fallback core (``raft/``)
and the BFT/fallback mode controller (``mode.py``).  Like every core it will do
no IO: inputs arrive through ``step``/``tick``, outputs leave as ``Effects``.
"""
