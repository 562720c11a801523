--------------------------- MODULE TraceBftCore ---------------------------
(***************************************************************************)
(* Trace validation of BftCore (after etcd-io/raft's Traceetcdraft.tla):  *)
(* Trace is a simulator run's honest actions in the order they happened,  *)
(* written by sim/spec_trace.py; each must be a step of BftCore's Next    *)
(* from the state the events before it left, with the parameters the      *)
(* code used (replica, regency, height, block, and for a regency change   *)
(* the STOP-DATA the replica sent).                                       *)
(*                                                                         *)
(* TLC explores TraceSpec.  Matched is violated exactly when a behaviour  *)
(* has consumed the whole trace: the trace is accepted.  If TLC ends      *)
(* without that, no behaviour of the spec takes these steps: rejected; a  *)
(* second run with deadlocks reported shows where one got stuck.          *)
(* proofs/trace.py writes the module holding Trace and runs TLC.          *)
(***************************************************************************)
EXTENDS BftCore, Sequences

CONSTANT Trace  \* a sequence of [k, r, g, h, v, dh, pg, pv] records

VARIABLE step   \* the index of the next event to match

Block(n) == IF n = 0 THEN NoBlock ELSE n  \* blocks are 1, 2, ...; 0 is "none"

\* One event of the trace as the spec action it names.
Matches(e) ==
    CASE e.k = "propose" ->
            /\ regency[e.r] = e.g /\ Open(e.r) = e.h /\ Propose(e.r, e.v)
      [] e.k = "write" ->
            /\ regency[e.r] = e.g /\ Open(e.r) = e.h /\ Write(e.r, e.v)
      [] e.k = "accept" ->
            /\ regency[e.r] = e.g /\ Open(e.r) = e.h /\ Accept(e.r, e.v)
      [] e.k = "decide" ->
            /\ Open(e.r) = e.h /\ Decide(e.r, e.v)
            \* g: the certificate's regency (the code leaves the sync state on a block
            \* of its own regency); -1: a height decided by installing a peer's
            \* checkpoint, where the code looks at no certificate (see spec_trace.py)
            /\ e.g = -1 \/ inSync'[e.r] = IF e.g = regency[e.r] THEN FALSE ELSE inSync[e.r]
      [] e.k = "stop" ->
            /\ regency[e.r] + 1 = e.g /\ Stop(e.r)
            /\ e.dh = -2 \/ <<e.r, e.g, e.dh, e.pg, Block(e.pv)>> \in stopdata'
      [] e.k = "sync" ->
            /\ regency[e.r] = e.g /\ Open(e.r) = e.h /\ Sync(e.r, e.v)
      [] e.k = "follow" ->
            /\ regency[e.r] = e.g /\ FollowSync(e.r)
            /\ IF e.v = 0 THEN writes' = writes
               ELSE /\ Open(e.r) = e.h
                    /\ writes' = writes \cup {<<e.r, e.h, e.g, e.v>>}

TraceInit == Init /\ step = 1

TraceNext == step <= Len(Trace) /\ Matches(Trace[step]) /\ step' = step + 1

TraceSpec == TraceInit /\ [][TraceNext]_<<vars, step>>

\* Violated when the whole trace has been matched: that is acceptance.
Matched == step <= Len(Trace)

=============================================================================
