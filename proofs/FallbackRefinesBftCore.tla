------------------------ MODULE FallbackRefinesBftCore ------------------------
(***************************************************************************)
(* S1 of Fallback.tla, with Byzantine replicas, by refinement: every step  *)
(* of Fallback.tla, seen through the mapping below, is a step of           *)
(* BftCore.tla at one height (MaxHeight = 1) or leaves BftCore's variables *)
(* unchanged.  So every decision Fallback.tla makes is one BftCore.tla     *)
(* makes, and BftCore's Agreement, checked exhaustively with a Byzantine   *)
(* replica (models/bft_byz_h1.cfg: the constants of this instance), is     *)
(* Fallback's.                                                             *)
(*                                                                         *)
(* Why it holds (each Fallback action against BftCore's):                  *)
(* - Write, Accept: BftCore's guards plus regency > 0 and BFT mode.        *)
(* - Decide: the same certificate; the log rebase touches no BFT variable. *)
(* - Stop: the same STOP-DATA plus the report and the last WRITE, which    *)
(* the mapping drops (an honest replica sends one STOP-DATA a regency,     *)
(* so no two map to one).                                                  *)
(* - Sync, FollowSync: with a write proof in the quorum the SYNC carries   *)
(* its block, as BftCore's; without one Fallback narrows BftCore's free    *)
(* choice (reports, then the WRITEs reported); a follower's refusal        *)
(* (Conflict) only disables the step.                                      *)
(* - EnterFallback, elections, appends, commits: no BFT variable changes.  *)
(* The one exception is MUTATE_FINAL_ON_MAJORITY, which sets decided       *)
(* from a fallback commit: models/mutant_refinement_final_on_majority      *)
(* shows TLC reports that step.                                            *)
(* Init: regency 0 already happened.  The refinement below is a property  *)
(* of steps ([][...]_v); that BftCore reaches every initial state, mapped  *)
(* the same way, is checked by FallbackInitInBftCore.tla.                 *)
(***************************************************************************)
EXTENDS Fallback

CONSTANT BadBlock  \* BftCore's Bad: a block no honest replica validates

\* Fallback's messages as BftCore's: height 1 added, the fallback parts dropped.
AtHeight1(P) == {<<1, p[1], p[2]>> : p \in P}
VotesAtHeight1(V) == {<<x[1], 1, x[2], x[3]>> : x \in V}

Core == INSTANCE BftCore WITH
    MaxHeight <- 1,
    Bad <- BadBlock,
    MUTATE_SYNC_FREE_CHOICE <- FALSE,
    MUTATE_NO_VALIDATION <- FALSE,
    decided <- [r \in Honest |-> [h \in {1} |-> decided[r]]],
    proposes <- AtHeight1(proposes),
    writes <- VotesAtHeight1(writes),
    accepts <- VotesAtHeight1(accepts),
    stopdata <- {<<e[1], e[2], e[3], e[4], e[5]>> : e \in stopdata},
    syncs <- AtHeight1(syncs)

\* Every step is a BftCore step on the mapped variables, or leaves them alone.
RefinesBftCore == [][Core!Next]_Core!vars

=============================================================================
