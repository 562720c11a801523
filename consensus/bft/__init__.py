from consensus.bft.replica import BftReplica, Genesis, ReplicaConfig, genesis_header

__all__ = ["BftReplica", "Genesis", "ReplicaConfig", "genesis_header"]
