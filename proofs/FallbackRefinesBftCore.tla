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
(* Init: regency 0 already happened, a state BftCore reaches from its      *)
(* Init by Propose (leader 0), the WRITEs, then the ACCEPTs over a write   *)
(* proof, which is how Fallback's Init builds it; the refinement below is  *)
(* a property of steps ([][...]_v), so it does not restate that.           *)
(***************************************************************************)
EXTENDS Fallback

CONSTANT BadBlock  \* BftCore's Bad: a block no honest replica validates

Core == INSTANCE BftCore WITH
    MaxHeight <- 1,
    Bad <- BadBlock,
    MUTATE_SYNC_FREE_CHOICE <- FALSE,
    MUTATE_NO_VALIDATION <- FALSE,
    decided <- [r \in Honest |-> [h \in {1} |-> decided[r]]],
    proposes <- {<<1, p[1], p[2]>> : p \in proposes},
    writes <- {<<w[1], 1, w[2], w[3]>> : w \in writes},
    accepts <- {<<a[1], 1, a[2], a[3]>> : a \in accepts},
    stopdata <- {<<e[1], e[2], e[3], e[4], e[5]>> : e \in stopdata},
    syncs <- {<<1, s[1], s[2]>> : s \in syncs}

\* Every step is a BftCore step on the mapped variables, or leaves them alone.
RefinesBftCore == [][Core!Next]_Core!vars

=============================================================================
