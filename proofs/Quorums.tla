------------------------------ MODULE Quorums ------------------------------
(***************************************************************************)
(* The quorum-intersection facts the design relies on (DESIGN 3.2, 3.3),   *)
(* checked by TLC over every quorum and every set of at most F Byzantine  *)
(* replicas of a finite cluster.  They are stated as invariants of a spec *)
(* that never moves: TLC checks them in every initial state.              *)
(*                                                                         *)
(*   BftQuorumsMeetInHonest: two BFT quorums (2F+1) share an honest       *)
(*     replica: why two different blocks cannot both be decided.          *)
(*   MajoritiesMeet: two fallback majorities share a replica: Raft's      *)
(*     election and commit rules.                                          *)
(*   BftQuorumMeetsMajorityInHonest: a BFT quorum and a fallback majority *)
(*     share an honest replica.  True for n = 4 (both are 3 of 4), false  *)
(*     for n = 7 (5 and 4 of 7 may share only the 2 Byzantine replicas):  *)
(*     there S1 rests on the vote rule instead (a fallback vote needs the *)
(*     candidate's BFT-final height to be at least the voter's, and a     *)
(*     block ACCEPTed in BFT enters the fallback log as a tentative       *)
(*     entry).  Model quorums_n7_mixed shows TLC finding the              *)
(*     counterexample.                                                     *)
(***************************************************************************)
EXTENDS Naturals, FiniteSets

CONSTANTS N, F

Replicas == 0 .. N - 1
BftQuorum == 2 * F + 1
Majority == N \div 2 + 1
BftQuorums == {Q \in SUBSET Replicas : Cardinality(Q) = BftQuorum}
Majorities == {M \in SUBSET Replicas : Cardinality(M) = Majority}
FaultSets == {B \in SUBSET Replicas : Cardinality(B) <= F}

ASSUME N = 3 * F + 1

(* The state is one choice of Byzantine replicas, two BFT quorums and a    *)
(* fallback majority; TLC enumerates every choice as an initial state, so  *)
(* a counterexample names the replicas.                                    *)
VARIABLES byz, q1, q2, m
vars == <<byz, q1, q2, m>>

Init ==
    /\ byz \in FaultSets
    /\ q1 \in BftQuorums /\ q2 \in BftQuorums
    /\ m \in Majorities
Next == UNCHANGED vars
Spec == Init /\ [][Next]_vars

BftQuorumsMeetInHonest == (q1 \cap q2) \ byz # {}

\* Constant: it holds for every cluster size, and TLC checks it once.
MajoritiesMeet == \A M1, M2 \in Majorities : M1 \cap M2 # {}

BftQuorumMeetsMajorityInHonest == (q1 \cap m) \ byz # {}
=============================================================================
