------------------------------ MODULE BftCore ------------------------------
(***************************************************************************)
(* The BFT core of consensus/bft/replica.py: BFT-SMaRt's normal case      *)
(* (PROPOSE, WRITE, ACCEPT, decide on q ACCEPTs) and its regency change   *)
(* (STOP, STOP-DATA, SYNC), one consensus instance per block height.      *)
(*                                                                         *)
(* Byzantine replicas are not given actions.  Instead every message a     *)
(* Byzantine replica could sign is taken as already sent: a WRITE or      *)
(* ACCEPT of any value in any regency, any PROPOSE when it leads, and any *)
(* STOP-DATA claim it can back with signatures that exist.  Honest        *)
(* replicas only ever see messages, so this covers every Byzantine        *)
(* strategy at once and keeps Byzantine choices out of the state.         *)
(*                                                                         *)
(* Values stand for blocks.  Bad is a block no honest replica validates   *)
(* (a wrong state hash, wrong agent verdicts); only Byzantine replicas    *)
(* WRITE or ACCEPT it.                                                     *)
(*                                                                         *)
(* The MUTATE_* constants switch off one rule each, so the tests can show *)
(* TLC finds the violation the rule prevents; every real model sets them  *)
(* FALSE.                                                                  *)
(***************************************************************************)
EXTENDS Integers, FiniteSets

CONSTANTS
    N,          \* replicas, ids 0..N-1; the leader of regency g is g % N
    Byz,        \* the Byzantine replicas, at most F of them
    F,          \* faults tolerated: N = 3F + 1
    Quorum,     \* q: 2F + 1 (a mutated model sets F + 1)
    MaxHeight,  \* heights 1..MaxHeight are decided in order
    MaxRegency, \* regencies 0..MaxRegency
    Values,     \* valid blocks
    Bad,        \* an invalid block (a model value not in Values)
    NoBlock,    \* "nothing" where a block goes (a model value)
    MUTATE_SYNC_FREE_CHOICE, \* SYNC may ignore the write proofs in STOP-DATA
    MUTATE_NO_VALIDATION     \* honest replicas WRITE blocks they did not validate

Replicas == 0 .. N - 1
Honest == Replicas \ Byz
Heights == 1 .. MaxHeight
Regencies == 0 .. MaxRegency
Blocks == Values \cup {Bad}
None == -1  \* "nothing" where a height or a regency goes
Leader(g) == g % N

ASSUME
    /\ Byz \subseteq Replicas /\ Cardinality(Byz) <= F /\ N = 3 * F + 1
    /\ Quorum \in 1 .. N /\ Bad \notin Values /\ NoBlock \notin Blocks

VARIABLES
    regency,   \* regency[r]: the regency honest replica r is in
    inSync,    \* inSync[r]: r moved to its regency and awaits the leader's SYNC
    decided,   \* decided[r][h]: the block r decided at height h, or NoBlock
    proposes,  \* <<h, g, v>>: the honest leader of g proposed v at h
    writes,    \* <<r, h, g, v>>: honest r sent WRITE
    accepts,   \* <<r, h, g, v>>: honest r sent ACCEPT (it holds a write proof)
    stopdata,  \* <<r, g, dh, pg, pv>>: honest r's STOP-DATA for regency g
    syncs      \* <<h, g, v>>: the honest leader of g sent SYNC re-proposing v at h

vars == <<regency, inSync, decided, proposes, writes, accepts, stopdata, syncs>>

-----------------------------------------------------------------------------
(* What has been signed, by honest replicas (the sets) or possibly by      *)
(* Byzantine ones (always).                                                *)

Proposed(h, g, v) ==
    IF Leader(g) \in Byz THEN TRUE ELSE <<h, g, v>> \in proposes

\* The replicas that signed a WRITE (ACCEPT) of v at h in regency g: every
\* Byzantine one, and the honest ones whose vote is in writes (accepts).  Those
\* sets hold honest senders only (SentByHonest, checked with TypeOK), so the
\* count is |Byz| plus the matching votes, which TLC counts more cheaply than
\* the signers among all replicas.
Writers(h, g, v) ==
    Cardinality(Byz) + Cardinality({w \in writes : w[2] = h /\ w[3] = g /\ w[4] = v})
Accepters(h, g, v) ==
    Cardinality(Byz) + Cardinality({a \in accepts : a[2] = h /\ a[3] = g /\ a[4] = v})
\* q WRITEs for v: a write proof (BFT-SMaRt's writeset), needed to ACCEPT.
WriteProof(h, g, v) == Writers(h, g, v) >= Quorum
\* q ACCEPTs for v: a commit certificate.
Certified(h, v) ==
    \E g \in Regencies : Accepters(h, g, v) >= Quorum

\* The height an honest replica works on: one above its last decided height.
\* Heights are decided in order (DecidedInOrder, checked with TypeOK), so this is
\* the number of heights decided (counting is cheaper for TLC than a CHOOSE).
DecidedHeight(r) == Cardinality({h \in Heights : decided[r][h] # NoBlock})
Open(r) == DecidedHeight(r) + 1

\* r's best write proof at height h: the highest regency it ACCEPTed in.
BestProof(r, h) ==
    LET gs == {g \in Regencies : \E v \in Blocks : <<r, h, g, v>> \in accepts}
    IN IF gs = {} THEN <<None, NoBlock>>
       ELSE LET g == CHOOSE x \in gs : \A y \in gs : y <= x
            IN <<g, CHOOSE v \in Blocks : <<r, h, g, v>> \in accepts>>

(* STOP-DATA entries for regency g: honest ones as sent; Byzantine ones as *)
(* any claim backed by signatures that exist (a certificate for the        *)
(* decided height, a write proof for the value), or hiding everything.     *)
ByzStopData(g) ==
    {<<b, g, dh, pg, pv>> :
        b \in Byz, dh \in 0 .. MaxHeight, pg \in {None} \cup Regencies,
        pv \in {NoBlock} \cup Blocks}
ProvableClaim(e) ==
    LET dh == e[3]  pg == e[4]  pv == e[5] IN
    /\ dh = 0 \/ \E v \in Blocks : Certified(dh, v)
    /\ \/ pg = None /\ pv = NoBlock
       \/ /\ pg # None /\ pv # NoBlock /\ pg < e[2] /\ dh < MaxHeight
          /\ WriteProof(dh + 1, pg, pv)
\* A Byzantine replica that sends no STOP-DATA "claims" this (sender None).
NoClaim(g) == <<None, g, 0, None, NoBlock>>
\* ByzClaims(g) is {e \in ByzStopData(g) : ProvableClaim(e)} plus NoClaim(g),
\* built from the certified heights and write proofs that exist, each looked up
\* once instead of once per candidate claim: TLC evaluates it for every SYNC a
\* follower weighs.  ByzClaimsExact (checked in bft_byz_h1) says they agree.
ByzClaims(g) ==
    LET dhs == {dh \in 0 .. MaxHeight : dh = 0 \/ \E v \in Blocks : Certified(dh, v)}
        proofs(dh) ==
            {<<None, NoBlock>>} \cup
            IF dh >= MaxHeight THEN {}
            ELSE {p \in {x \in Regencies : x < g} \X Blocks : WriteProof(dh + 1, p[1], p[2])}
    IN {<<b, g, x[1], x[2][1], x[2][2]>> :
            b \in Byz, x \in UNION {{dh} \X proofs(dh) : dh \in dhs}}
       \cup {NoClaim(g)}

Max(S) == CHOOSE x \in S : \A y \in S : y <= x

(* A SYNC for regency g re-proposing v at height h is justified by q      *)
(* STOP-DATAs from distinct replicas: h is one above the highest decided  *)
(* height they report, and v is the block of the highest-regency write    *)
(* proof at h among them; with no proof the leader chooses freely.        *)
(* This is Replica._sync_choice; honest followers check it (_sync_problem).*)
(* Python narrows the free choice (_written_choice: the block WRITTEN in  *)
(* the highest regency the STOP-DATAs report, for S2, Fallback.tla); here *)
(* it stays free, a superset of behaviours, so S1 and validity carry over. *)
(* The STOP-DATAs are some honest ones as sent plus at most one claim per *)
(* Byzantine replica (the choice c), which keeps the search small.        *)
\* Every set of q STOP-DATAs for regency g from distinct replicas: some honest
\* ones as sent plus at most one claim per Byzantine replica (the choice c).
StopDataQuorums(g) ==
    LET claims == ByzClaims(g)
        honest == {e \in stopdata : e[2] = g}
    IN {S \in {H \cup {c[b] : b \in {x \in Byz : c[x][1] = x}} :
                H \in SUBSET honest, c \in [Byz -> claims]} :
            Cardinality(S) = Quorum /\ Cardinality({e[1] : e \in S}) = Quorum}

\* The <<height, block>> pairs a SYNC justified by the STOP-DATA quorum S may carry.
SyncChoices(S) ==
    LET h == Max({e[3] : e \in S}) + 1
        P == {e \in S : e[3] + 1 = h /\ e[4] # None}
    IN IF h \notin Heights THEN {}
       ELSE IF P = {} \/ MUTATE_SYNC_FREE_CHOICE THEN {<<h, v>> : v \in Values}
       ELSE {<<h, e[5]>> : e \in {x \in P : \A o \in P : o[4] <= x[4]}}

Justified(g) == UNION {SyncChoices(S) : S \in StopDataQuorums(g)}

\* The SYNCs of regency g a follower may receive: the honest leader's as sent,
\* or any a Byzantine leader can justify.
SyncsSent(g) ==
    IF Leader(g) \in Byz THEN Justified(g)
    ELSE {<<x[1], x[3]>> : x \in {y \in syncs : y[2] = g}}

HasWritten(r, h, g) == \E v \in Blocks : <<r, h, g, v>> \in writes
Valid(v) == v \in Values \/ MUTATE_NO_VALIDATION

-----------------------------------------------------------------------------
(* Honest replicas' actions.  Each names the Python function it models.    *)

Init ==
    /\ regency = [r \in Honest |-> 0]
    /\ inSync = [r \in Honest |-> FALSE]
    /\ decided = [r \in Honest |-> [h \in Heights |-> NoBlock]]
    /\ proposes = {} /\ writes = {} /\ accepts = {} /\ stopdata = {} /\ syncs = {}

\* Replica._maybe_propose: the leader proposes at its open height.  In a
\* regency above 0 it proposes only above the height its SYNC settled.
Propose(r, v) ==
    LET g == regency[r]  h == Open(r) IN
    /\ Leader(g) = r /\ ~inSync[r] /\ h \in Heights /\ v \in Values
    /\ g = 0 \/ \E k \in Heights, w \in Blocks : k < h /\ <<k, g, w>> \in syncs
    /\ \A w \in Blocks : <<h, g, w>> \notin proposes /\ <<h, g, w>> \notin syncs
    /\ proposes' = proposes \cup {<<h, g, v>>}
    /\ writes' = writes \cup {<<r, h, g, v>>}
    /\ UNCHANGED <<regency, inSync, decided, accepts, stopdata, syncs>>

\* Replica._on_propose -> _accept_proposal: WRITE the leader's valid block,
\* once per regency and height.
Write(r, v) ==
    LET g == regency[r]  h == Open(r) IN
    /\ ~inSync[r] /\ h \in Heights /\ Valid(v)
    /\ Proposed(h, g, v) /\ ~HasWritten(r, h, g)
    /\ writes' = writes \cup {<<r, h, g, v>>}
    /\ UNCHANGED <<regency, inSync, decided, proposes, accepts, stopdata, syncs>>

\* Replica._record_write: q WRITEs for the block r wrote -> ACCEPT.
Accept(r, v) ==
    LET g == regency[r]  h == Open(r) IN
    /\ h \in Heights /\ <<r, h, g, v>> \in writes /\ WriteProof(h, g, v)
    /\ \A w \in Blocks : <<r, h, g, w>> \notin accepts
    /\ accepts' = accepts \cup {<<r, h, g, v>>}
    /\ UNCHANGED <<regency, inSync, decided, proposes, writes, stopdata, syncs>>

\* Replica._record_accept -> _decide, and catch-up (_on_blocks): a block with
\* a commit certificate is decided at the open height, in any regency.
Decide(r, v) ==
    LET h == Open(r) IN
    /\ h \in Heights
    \* Only regencies with an honest ACCEPT of v at h can hold a certificate, unless
    \* the Byzantine replicas alone make a quorum (a mutant): looking only there
    \* saves TLC a count per regency.
    /\ \E g \in {a[3] : a \in {x \in accepts : x[2] = h /\ x[4] = v}} \cup
                (IF Cardinality(Byz) >= Quorum THEN Regencies ELSE {}) :
        /\ Accepters(h, g, v) >= Quorum
        \* Decided in r's own regency: its SYNC was followed by a quorum, so r may
        \* follow the leader even though it missed the SYNC.
        /\ inSync' = IF g = regency[r] THEN [inSync EXCEPT ![r] = FALSE] ELSE inSync
    /\ decided' = [decided EXCEPT ![r][h] = v]
    /\ UNCHANGED <<regency, proposes, writes, accepts, stopdata, syncs>>

\* Replica._start_regency_change / _install_regency: on a timeout r moves to
\* the next regency and sends STOP-DATA with its decided height and its best
\* write proof at the open height.
Stop(r) ==
    LET g == regency[r] + 1  dh == DecidedHeight(r)
        proof == IF dh < MaxHeight THEN BestProof(r, dh + 1) ELSE <<None, NoBlock>> IN
    /\ g \in Regencies
    /\ regency' = [regency EXCEPT ![r] = g]
    /\ inSync' = [inSync EXCEPT ![r] = TRUE]
    /\ stopdata' = stopdata \cup {<<r, g, dh, proof[1], proof[2]>>}
    /\ UNCHANGED <<decided, proposes, writes, accepts, syncs>>

\* Replica._maybe_sync: the new leader, caught up to the height the
\* STOP-DATAs require, sends a justified SYNC and WRITEs its block.
Sync(r, v) ==
    LET g == regency[r]  h == Open(r) IN
    /\ Leader(g) = r /\ inSync[r] /\ h \in Heights
    /\ <<h, v>> \in Justified(g)
    /\ syncs' = syncs \cup {<<h, g, v>>}
    /\ inSync' = [inSync EXCEPT ![r] = FALSE]
    /\ writes' = writes \cup {<<r, h, g, v>>}
    /\ UNCHANGED <<regency, decided, proposes, accepts, stopdata>>

\* Replica._on_sync: a follower checks the SYNC, leaves the sync state and
\* WRITEs the re-proposed block (or just leaves it, having decided that
\* height already).
FollowSync(r) ==
    LET g == regency[r] IN
    /\ inSync[r] /\ Leader(g) # r
    /\ \E sync \in SyncsSent(g) :
        LET h == sync[1]  v == sync[2] IN
        /\ h <= Open(r) /\ Valid(v)
        /\ inSync' = [inSync EXCEPT ![r] = FALSE]
        /\ writes' = IF h = Open(r) /\ ~HasWritten(r, h, g)
                     THEN writes \cup {<<r, h, g, v>>} ELSE writes
    /\ UNCHANGED <<regency, decided, proposes, accepts, stopdata, syncs>>

Next ==
    \E r \in Honest :
        \/ \E v \in Values : Propose(r, v) \/ Sync(r, v)
        \/ \E v \in Blocks : Write(r, v) \/ Accept(r, v) \/ Decide(r, v)
        \/ Stop(r)
        \/ FollowSync(r)

Spec == Init /\ [][Next]_vars

-----------------------------------------------------------------------------
(* Properties.                                                             *)

\* ByzClaims is the set its comment says.
ByzClaimsExact ==
    \A g \in Regencies :
        ByzClaims(g) = {e \in ByzStopData(g) : ProvableClaim(e)} \cup {NoClaim(g)}

\* What Writers and Accepters rely on.
SentByHonest == \A m \in writes \cup accepts : m[1] \in Honest

\* What DecidedHeight relies on.
DecidedInOrder ==
    \A r \in Honest, h \in Heights :
        decided[r][h] # NoBlock => \A k \in 1 .. h : decided[r][k] # NoBlock

\* S1: no two honest replicas decide different blocks at one height.
Agreement ==
    \A r1, r2 \in Honest, h \in Heights :
        decided[r1][h] # NoBlock /\ decided[r2][h] # NoBlock => decided[r1][h] = decided[r2][h]

\* Validity: an honest replica decides only blocks it can validate.
Validity ==
    \A r \in Honest, h \in Heights : decided[r][h] \in Values \cup {NoBlock}

TypeOK ==
    /\ regency \in [Honest -> Regencies]
    /\ inSync \in [Honest -> BOOLEAN]
    /\ decided \in [Honest -> [Heights -> Blocks \cup {NoBlock}]]
    /\ DecidedInOrder
    /\ SentByHonest

=============================================================================
