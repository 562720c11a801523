------------------------------ MODULE BftLive ------------------------------
(***************************************************************************)
(* L1 for the BFT core: after the network stabilises (GST), every honest  *)
(* replica decides every height, under weak fairness of honest steps.      *)
(*                                                                         *)
(* BftCore.tla's actions unchanged, plus a flag gst.  Before GST anything  *)
(* may happen, timeouts (Stop) included, but only up to regency           *)
(* MaxRegency - F, so that the model keeps room for the regency changes a  *)
(* synchronous network still needs: at most F leaders in a row are        *)
(* Byzantine.  After GST a timeout fires only where it fires in a         *)
(* synchronous network: the replica's leader is Byzantine (it may stall), *)
(* or another honest replica is in a higher regency (BFT-SMaRt's "join a   *)
(* regency change f + 1 replicas started", _on_stop).  Every honest step   *)
(* is weakly fair after GST, and GST itself eventually happens.  Byzantine *)
(* replicas keep every message they could sign "already sent", so they    *)
(* may help or not; they cannot force a timeout on an honest leader.       *)
(*                                                                         *)
(* MUTATE_NO_JOIN drops the join rule: replicas left behind in a lower    *)
(* regency with an honest leader never move up, and TLC must find a       *)
(* behaviour where some honest replica never decides.                      *)
(***************************************************************************)
EXTENDS BftCore

CONSTANT MUTATE_NO_JOIN

VARIABLE gst

liveVars == <<vars, gst>>

\* Before GST a timeout keeps F regencies of headroom.
PreGstMax == MaxRegency - F

ASSUME
    /\ PreGstMax >= 0
    \* every run of F + 1 consecutive regencies has an honest leader
    /\ \A g \in 0 .. PreGstMax : \E k \in g .. g + F : k \in Regencies /\ Leader(k) \notin Byz

LInit == Init /\ gst = FALSE

GST == ~gst /\ gst' = TRUE /\ UNCHANGED vars

\* When a timeout may fire.
StopOk(r) ==
    IF ~gst THEN regency[r] < PreGstMax
    ELSE \/ Leader(regency[r]) \in Byz
         \/ ~MUTATE_NO_JOIN /\ \E s \in Honest : regency[s] > regency[r]

TimedStop(r) == Stop(r) /\ StopOk(r) /\ UNCHANGED gst

Step(r) ==
    \/ \E v \in Values : Propose(r, v) \/ Sync(r, v)
    \/ \E v \in Blocks : Write(r, v) \/ Accept(r, v) \/ Decide(r, v)
    \/ FollowSync(r)

LNext == GST \/ \E r \in Honest : TimedStop(r) \/ (Step(r) /\ UNCHANGED gst)

\* Weak fairness of each honest replica's kinds of step, once the network is
\* synchronous; before GST nothing need happen.
Fairness ==
    /\ WF_liveVars(GST)
    /\ \A r \in Honest :
        /\ WF_liveVars(gst /\ TimedStop(r))
        /\ WF_liveVars(gst /\ \E v \in Values : Propose(r, v) /\ UNCHANGED gst)
        /\ WF_liveVars(gst /\ \E v \in Values : Sync(r, v) /\ UNCHANGED gst)
        /\ WF_liveVars(gst /\ \E v \in Blocks : Write(r, v) /\ UNCHANGED gst)
        /\ WF_liveVars(gst /\ \E v \in Blocks : Accept(r, v) /\ UNCHANGED gst)
        /\ WF_liveVars(gst /\ \E v \in Blocks : Decide(r, v) /\ UNCHANGED gst)
        /\ WF_liveVars(gst /\ FollowSync(r) /\ UNCHANGED gst)

LSpec == LInit /\ [][LNext]_liveVars /\ Fairness

\* L1: every honest replica eventually decides every height.
AllDecide == <>(\A r \in Honest, h \in Heights : decided[r][h] # NoBlock)

=============================================================================
