---------------------------- MODULE FallbackLive ----------------------------
(***************************************************************************)
(* L1 across the heal: once the network heals, the cluster leaves the Raft *)
(* fallback and every honest replica decides the open height under BFT    *)
(* (FINAL); with no Byzantine replica the FINAL block is the one any      *)
(* provisional commit holds (the provisional suffix is re-certified, not  *)
(* rolled back).  Under weak fairness of honest BFT steps after the heal. *)
(*                                                                         *)
(* Fallback.tla's actions unchanged, plus a flag gst (the heal: from then *)
(* on q replicas hear each other and messages arrive in time).            *)
(*                                                                         *)
(* Before GST anything Fallback.tla allows may happen: replicas enter     *)
(* fallback, elect, append and commit provisionally, BFT steps fire,      *)
(* except that a regency change (Stop: a timeout, or a heal attempt that  *)
(* fails) only reaches regency PreGstMax, so the model keeps room for the *)
(* regency changes the healed network still needs.                        *)
(*                                                                         *)
(* After GST only the steps of a synchronous healed network:               *)
(* - no replica enters fallback (BFT is not stalled: the stall rule needs *)
(*   fallback_after_ticks without a decision, longer than the heal);       *)
(* - a fallback leader appends nothing (RaftCore.frozen, set by           *)
(*   ModeController._maybe_heal while q replicas hear each other);        *)
(*   elections, commits of entries already sent and follower appends may  *)
(*   still happen, without fairness: the heal must not depend on them,    *)
(*   unless FrozenAfterGst, with which the fallback takes no step at all  *)
(*   after GST (every catalogued model: a restriction, proofs/README.md); *)
(* - a regency change (Stop) fires only where it fires in that network:   *)
(*   . the heal: a replica in fallback that has not started one since it  *)
(*     entered (regency = entryRegency; ModeController._maybe_heal);      *)
(*   . the stalled regency 0 (its history is Init; its leader acts no     *)
(*     more): a replica still in BFT mode there times out                 *)
(*     (BftReplica._check_timeouts);                                      *)
(*   . the leader of its regency is Byzantine (it may stall);             *)
(*   . join: another honest replica is in a higher regency (BFT-SMaRt's   *)
(*     f + 1 STOPs, BftReplica._on_stop);                                 *)
(*   . a SYNC of its regency arrived and it refuses every one             *)
(*     (ModeController._fallback_conflict): its regency timer (BFT mode)  *)
(*     or heal retry (fallback, heal_retry_ticks) fires.                  *)
(* Each honest kind of BFT step (Write, Accept, Decide, Stop, Sync,      *)
(* FollowSync) is weakly fair after GST, and GST itself eventually        *)
(* happens.  Byzantine replicas keep every message they could sign        *)
(* "already sent" (Fallback.tla), so they may help or not.                *)
(*                                                                         *)
(* MUTATE_NO_HEAL: a replica in fallback never starts the re-certifying   *)
(* regency change (ModeController's unsafe_never_heal); when every       *)
(* replica is in fallback nothing moves BFT again.                         *)
(* MUTATE_SYNC_IGNORES_REPORTS: the heal leader weighs no fallback report *)
(* (BftReplica._choose_suffix skipped); replicas holding a provisional    *)
(* commit of another block refuse its SYNC (_fallback_conflict), and the  *)
(* heal never decides.                                                     *)
(***************************************************************************)
EXTENDS Fallback

CONSTANTS
    PreGstMax,      \* the highest regency a regency change reaches before GST
    FrozenAfterGst, \* TRUE: after GST the fallback takes no step at all
    MUTATE_NO_HEAL, \* a replica in fallback never starts the heal
    MUTATE_SYNC_IGNORES_REPORTS \* the heal leader's SYNC weighs no fallback report

VARIABLE gst

liveVars == <<vars, gst>>

ASSUME
    /\ PreGstMax \in 0 .. MaxRegency - 1
    /\ MUTATE_NO_HEAL \in BOOLEAN /\ FrozenAfterGst \in BOOLEAN
    /\ MUTATE_SYNC_IGNORES_REPORTS \in BOOLEAN
    \* above every regency reached before GST, one with an honest leader
    \* within F + 1 regencies (at most F Byzantine leaders in a row)
    /\ \A g \in 0 .. PreGstMax :
          \E k \in g + 1 .. g + F + 1 : k \in Regencies /\ Leader(k) \notin Byz

LInit == Init /\ gst = FALSE

GST == ~gst /\ gst' = TRUE /\ UNCHANGED vars

\* A SYNC of r's regency arrived and r refuses every one (its own fallback log is
\* more up to date, FollowSync's check).
Refuses(r) ==
    LET g == regency[r] IN
    /\ inSync[r] /\ Open(r) /\ Leader(g) # r
    /\ SyncsSent(g) # {}
    /\ \A s \in SyncsSent(g) : s[4] /\ Conflict(r, s[1], s[2], s[3])

\* When a regency change may start.
StopOk(r) ==
    IF ~gst THEN regency[r] < PreGstMax
    ELSE \/ mode[r] = "fallback" /\ regency[r] = entryRegency[r] /\ ~MUTATE_NO_HEAL
         \/ mode[r] = "bft" /\ regency[r] = 0 /\ Open(r)
         \/ Leader(regency[r]) \in Byz
         \/ \E s \in Honest : regency[s] > regency[r]
         \/ Refuses(r)

TimedStop(r) == Stop(r) /\ StopOk(r) /\ UNCHANGED gst

\* MUTATE_SYNC_IGNORES_REPORTS: Fallback.tla's Sync with no report weighed (the
\* leader re-proposes a write proof's block, else a WRITTEN one, else any).
SyncIgnoringReports(r) ==
    LET g == regency[r] IN
    /\ Leader(g) = r /\ inSync[r] /\ Open(r)
    /\ \E S \in StopDataQuorums(g) : \E o \in SyncOptions(S, {NoReport}) :
        /\ syncs' = syncs \cup {<<g, o[1], o[2], o[3]>>}
        /\ writes' = writes \cup {<<r, g, o[1]>>}
    /\ inSync' = [inSync EXCEPT ![r] = FALSE]
    /\ BackToBft(r, g, TRUE, NoBlock)
    /\ UNCHANGED <<regency, decided, proposes, accepts, stopdata, entryRegency,
                   term, voted, log, base, commitH, proven, lastElect, msgVars, pcommits>>

LSync(r) == IF MUTATE_SYNC_IGNORES_REPORTS THEN SyncIgnoringReports(r) ELSE Sync(r)

\* The BFT steps (the heal's).
BftStep(r) ==
    \/ \E v \in Values : Write(r, v) \/ Accept(r, v) \/ Decide(r, v)
    \/ LSync(r) \/ FollowSync(r)

\* The fallback's steps; after GST no entry and no append (frozen), and with
\* FrozenAfterGst nothing at all.
FallbackStep(r) ==
    \/ ~gst /\ EnterFallback(r)
    \/ ~gst /\ \E v \in Values : LeaderAppend(r, v)
    \/ ~(gst /\ FrozenAfterGst) /\
        \/ \E Q \in SUBSET (Honest \ {r}), t \in Terms : Elect(r, Q, t)
        \/ \E t \in Terms : ByzRequestVote(r, t)
        \/ \E k \in 1 .. MaxLog : LeaderCommit(r, k)
        \/ \E t \in Terms, k \in 0 .. MaxLog : FollowerAppend(r, t, k)

LNext ==
    \/ GST
    \/ \E r \in Honest : TimedStop(r) \/ ((BftStep(r) \/ FallbackStep(r)) /\ UNCHANGED gst)

\* Weak fairness of each honest replica's kinds of BFT step once the network
\* has healed; before GST nothing need happen, and no fallback step is fair.
Fairness ==
    /\ WF_liveVars(GST)
    /\ \A r \in Honest :
        /\ WF_liveVars(gst /\ TimedStop(r))
        /\ WF_liveVars(gst /\ \E v \in Values : Write(r, v) /\ UNCHANGED gst)
        /\ WF_liveVars(gst /\ \E v \in Values : Accept(r, v) /\ UNCHANGED gst)
        /\ WF_liveVars(gst /\ \E v \in Values : Decide(r, v) /\ UNCHANGED gst)
        /\ WF_liveVars(gst /\ LSync(r) /\ UNCHANGED gst)
        /\ WF_liveVars(gst /\ FollowSync(r) /\ UNCHANGED gst)

LSpec == LInit /\ [][LNext]_liveVars /\ Fairness

-----------------------------------------------------------------------------
(* Properties.                                                             *)

\* Every honest replica holds the open height FINAL and is back in BFT mode.
AllFinal == \A r \in Honest : decided[r] # NoBlock /\ mode[r] = "bft"

\* Every provisional commit's block at the open height is the FINAL one.
Recertified == \A x \in pcommits, r \in Honest : x[2][1] = decided[r]

\* L1 across the heal (with no Byzantine replica, also no rollback).  Once it
\* holds it holds for good: a decision is never undone and after GST no
\* replica enters fallback again.
HealDecides == <>(AllFinal /\ (Byz = {} => Recertified))

=============================================================================
