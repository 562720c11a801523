------------------------- MODULE FallbackInitInBftCore -------------------------
(***************************************************************************)
(* The initial states of Fallback.tla, where regency 0 has already played *)
(* out, are states BftCore.tla reaches: the base case of the refinement in *)
(* FallbackRefinesBftCore.tla, which checks steps only.                    *)
(*                                                                         *)
(* This is BftCore.tla at one height, kept in regency 0 (a CONSTRAINT),    *)
(* with a ghost variable: the target, one of Fallback's initial states     *)
(* mapped as FallbackRefinesBftCore maps every state.  Unreached is        *)
(* violated where BftCore's state equals the target; TLC runs with         *)
(* -continue, and the model holds when every target is reached, i.e. the  *)
(* number of violations equals the number of targets (printed at start).  *)
(***************************************************************************)
EXTENDS Integers, FiniteSets, TLC

CONSTANTS
    N, Byz, F, Quorum, Majority, MaxRegency, MaxTerm, MaxLog, Values, NoBlock, BadBlock,
    MUTATE_FINAL_ON_MAJORITY, MUTATE_VOTE_ANY, MUTATE_NO_TENTATIVE,
    MUTATE_SUFFIX_OVER_PROOF, MUTATE_SYNC_IGNORES_WRITES,
    FallbackSet, CandidateSet, FixedStart, Writers0, Accepters0

VARIABLES regency, inSync, decided, proposes, writes, accepts, stopdata, syncs, target

Core == INSTANCE BftCore WITH
    MaxHeight <- 1, Bad <- BadBlock,
    MUTATE_SYNC_FREE_CHOICE <- FALSE, MUTATE_NO_VALIDATION <- FALSE

\* Only constant-level definitions of Fallback are used: its variables other than
\* the BFT ones (which keep their names here) stand for nothing.
Unused == "unused"
FB == INSTANCE FallbackRefinesBftCore WITH
    decided <- Unused, mode <- Unused, entryRegency <- Unused, term <- Unused,
    voted <- Unused, role <- Unused, log <- Unused, base <- Unused, commitH <- Unused,
    proven <- Unused, lastElect <- Unused, tlog <- Unused, tcommit <- Unused,
    ackH <- Unused, pcommits <- Unused

\* Fallback's initial states, mapped: regency 0, nobody in a SYNC or decided, no
\* STOP-DATA or SYNC (as Fallback's Init says), and its regency-0 messages.
Targets ==
    {[regency |-> [r \in Core!Honest |-> 0],
      inSync |-> [r \in Core!Honest |-> FALSE],
      decided |-> [r \in Core!Honest |-> [h \in {1} |-> NoBlock]],
      proposes |-> FB!AtHeight1(s.proposes),
      writes |-> FB!VotesAtHeight1(s.writes),
      accepts |-> FB!VotesAtHeight1(s.accepts),
      stopdata |-> {}, syncs |-> {}] : s \in FB!InitBft}

ASSUME PrintT(<<"targets", Cardinality(Targets)>>)

Init == Core!Init /\ target \in Targets
Next == Core!Next /\ UNCHANGED target
Spec == Init /\ [][Next]_<<Core!vars, target>>

InRegency0 == \A r \in Core!Honest : regency[r] = 0

Unreached ==
    [regency |-> regency, inSync |-> inSync, decided |-> decided, proposes |-> proposes,
     writes |-> writes, accepts |-> accepts, stopdata |-> stopdata, syncs |-> syncs]
        # target

=============================================================================
