------------------------------ MODULE Fallback ------------------------------
(***************************************************************************)
(* BFT mode, the Raft fallback, and the way between them (DESIGN 3.3):    *)
(* consensus/mode.py (ModeController), consensus/raft/core.py (RaftCore)   *)
(* and the re-certifying regency change of consensus/bft/replica.py.       *)
(*                                                                         *)
(* Scope.  One open BFT height (height 1, above a common BFT-final base 0) *)
(* is decided by BFT; the fallback log may reach MaxLog heights, so a     *)
(* fallback leader can commit the tentative entry at height 1 by          *)
(* appending an entry of its own term above it, as Raft requires.  BFT is *)
(* BftCore.tla restricted to that height, plus modes: a replica in        *)
(* fallback casts no WRITE or ACCEPT; it still decides a certified block  *)
(* (catch-up), moves to the next regency (the heal) and follows a SYNC.    *)
(*                                                                         *)
(* Byzantine replicas (Byz) have no actions, as in BftCore.tla: every BFT  *)
(* message they could sign counts as sent, they vote for every fallback   *)
(* candidate and acknowledge every append, and their STOP-DATA may carry  *)
(* any fallback report.  They do not lead fallback terms: a Byzantine     *)
(* leader could only change honest fallback logs, which reach BFT through *)
(* STOP-DATA reports, and a Byzantine STOP-DATA may already carry any     *)
(* report.  S2 is a claim about runs with Byz = {}.                        *)
(*                                                                         *)
(* Fallback messages are modelled as the leader's log of each term        *)
(* (tlog[t]): an honest leader's log only grows while it leads, so every  *)
(* AppendEntries it sent carries a slice of tlog[t], delivered any number *)
(* of times, late or never.  An election is one step (Elect).           *)
(*                                                                         *)
(* Regency 0 is folded into the initial states (Init), elections into one *)
(* step, and an append's starting point is the highest matching height;   *)
(* each comment says why no behaviour is lost, only interleavings.  Even  *)
(* so the smallest useful model (n = 4) is out of reach of an exhaustive  *)
(* search, so CI samples it (TLC simulation, proofs/README.md).           *)
(* S1 does not rest on that sample: FallbackRefinesBftCore.tla maps each  *)
(* step onto BftCore.tla at one height, whose Agreement TLC searches      *)
(* exhaustively (models/bft_byz_h1.cfg).                                  *)
(* FallbackSet, CandidateSet and FixedStart bound a scenario: the mutant  *)
(* models use them to reach their violation fast; every behaviour they   *)
(* allow is one of the unbounded model's.                                 *)
(*                                                                         *)
(* The MUTATE_* constants switch off one rule each, so tests can show TLC *)
(* finds the violation the rule prevents; every real model sets them      *)
(* FALSE.  MUTATE_SUFFIX_OVER_PROOF has no violation at MaxRegency = 1   *)
(* (with one proposing regency the fallback suffix always agrees with   *)
(* the write proof) and needs MaxRegency = 2, which no run has reached.  *)
(* MUTATE_SYNC_IGNORES_WRITES is the rule before the S2 corner was found *)
(* (a SYNC with no proof and no report chose freely); TLC finds the     *)
(* rollback it allows in the directed family CornerNotFirst below.       *)
(***************************************************************************)
EXTENDS Integers, FiniteSets, Sequences, TLC

CONSTANTS
    N, Byz, F,
    Quorum,      \* BFT quorum q = 2F + 1
    Majority,    \* fallback majority N \div 2 + 1
    MaxRegency,  \* regencies 0..MaxRegency
    MaxTerm,     \* fallback terms up to MaxTerm
    MaxLog,      \* fallback log heights 1..MaxLog
    Values,      \* blocks (all valid; validation is BftCore.tla's business)
    NoBlock,     \* "nothing" where a block goes (a model value)
    MUTATE_FINAL_ON_MAJORITY, \* a fallback majority commit counts as FINAL
    MUTATE_VOTE_ANY,          \* votes without the BFT-final, up-to-date and proof checks
    MUTATE_NO_TENTATIVE,      \* entering fallback without the tentative entry
    MUTATE_SUFFIX_OVER_PROOF, \* re-certification prefers the fallback suffix to a write proof
    MUTATE_SYNC_IGNORES_WRITES, \* with no proof and no report, the SYNC ignores the WRITEs reported
    \* Scenario bounds (every behaviour they allow is one of the whole model's):
    FallbackSet,  \* the honest replicas that may enter fallback
    CandidateSet, \* the honest replicas that may win a fallback election
    FixedStart,   \* TRUE: regency 0 starts as Writers0 / Accepters0 say; FALSE: any start
    Writers0,     \* with FixedStart: the honest replicas that WROTE the proposal at regency 0
    Accepters0    \* with FixedStart: those of them that ACCEPTed it

Replicas == 0 .. N - 1
Honest == Replicas \ Byz
Regencies == 0 .. MaxRegency
Terms == 0 .. MaxTerm
None == -1
Leader(g) == g % N
Max(S) == CHOOSE x \in S : \A y \in S : y <= x
Min2(a, b) == IF a < b THEN a ELSE b
Max2(a, b) == IF a > b THEN a ELSE b
\* Lexicographic order on pairs (Raft's "at least as up to date").
GE(a, b) == a[1] > b[1] \/ (a[1] = b[1] /\ a[2] >= b[2])
GT(a, b) == a[1] > b[1] \/ (a[1] = b[1] /\ a[2] > b[2])

ASSUME
    /\ Byz \subseteq Replicas /\ Cardinality(Byz) <= F /\ N = 3 * F + 1
    /\ Quorum \in 1 .. N /\ Majority \in 1 .. N /\ NoBlock \notin Values
    /\ MaxTerm >= 1 /\ MaxLog >= 1
    /\ FallbackSet \subseteq Replicas /\ CandidateSet \subseteq Replicas
    /\ FixedStart \in BOOLEAN /\ Accepters0 \subseteq Writers0 /\ Writers0 \subseteq Replicas

Entries == [t : Terms, v : Values, tent : BOOLEAN]
NoReport == <<>>
\* A fallback report (FallbackReport): <<term, values at heights 1..>>.
Reports == {<<t, s>> : t \in 1 .. MaxTerm,
                       s \in UNION {[1 .. k -> Values] : k \in 1 .. MaxLog}}

VARIABLES
    \* BFT, per honest replica, at height 1
    regency, inSync, decided,
    \* BFT messages sent by honest replicas
    proposes,  \* <<g, v>>: the honest leader of g proposed v
    writes,    \* <<r, g, v>>
    accepts,   \* <<r, g, v>>: r held a write proof and ACCEPTed
    stopdata,  \* <<r, g, dh, pg, pv, report, wg, wv>>: wg, wv: r's highest WRITE at
               \* height 1 (regency, block), or <<None, NoBlock>>
    syncs,     \* <<g, v, suffix, pv>>: the honest leader of g re-proposed v; pv: the
               \* block of the highest write proof its STOP-DATAs showed (or NoBlock)
    \* the mode controller
    mode,         \* "bft" | "fallback"
    entryRegency, \* the regency the last fallback epoch started in
    \* the fallback core (RaftCore), per honest replica
    term, voted, role,
    log,       \* entries at heights base+1 .. base+Len(log)
    base,      \* the BFT-final height the log starts above (0 or 1)
    commitH,   \* commit height (absolute)
    proven,    \* the block at height 1 with a BFT write proof here (or NoBlock)
    lastElect, \* the term of the last election proof held (0: none)
    \* fallback messages
    tlog,      \* tlog[t]: [b, fin, es] the log of term t's honest leader (b = -1: none)
    tcommit,   \* tcommit[t]: the commit height term t's leader announced
    ackH,      \* ackH[r][t]: the highest k for which honest r acknowledged term t's log
    \* history, for S2
    pcommits   \* <<h, chain>>: some honest replica committed chain (heights 1..h) provisionally

bftVars == <<regency, inSync, decided, proposes, writes, accepts, stopdata, syncs>>
raftVars == <<term, voted, role, log, base, commitH, proven, lastElect>>
msgVars == <<tlog, tcommit, ackH>>
vars == <<bftVars, mode, entryRegency, raftVars, msgVars, pcommits>>

-----------------------------------------------------------------------------
(* BFT helpers (BftCore.tla at one height).                               *)

Proposed(g, v) == IF Leader(g) \in Byz THEN TRUE ELSE <<g, v>> \in proposes
\* The signers of a WRITE (ACCEPT) of v in regency g: every Byzantine replica and
\* the honest ones whose vote is in writes (accepts), which hold honest senders
\* only (SentByHonest, checked with TypeOK): |Byz| plus the matching votes.
WriteProof(g, v) ==
    Cardinality(Byz) + Cardinality({w \in writes : w[2] = g /\ w[3] = v}) >= Quorum
CertifiedIn(g, v) ==
    Cardinality(Byz) + Cardinality({a \in accepts : a[2] = g /\ a[3] = v}) >= Quorum
Certified(v) == \E g \in Regencies : CertifiedIn(g, v)
HasWritten(r, g) == \E v \in Values : <<r, g, v>> \in writes
Open(r) == decided[r] = NoBlock

BestProof(r) ==
    LET gs == {a[2] : a \in {x \in accepts : x[1] = r}}
    IN IF gs = {} THEN <<None, NoBlock>>
       ELSE LET g == Max(gs) IN <<g, CHOOSE v \in Values : <<r, g, v>> \in accepts>>

\* The block r WROTE in its highest regency at height 1, as its STOP-DATA reports it
\* (BftReplica._last_write): <<regency, block>>, or <<None, NoBlock>>.
LastWrite(r) ==
    LET gs == {w[2] : w \in {x \in writes : x[1] = r}}
    IN IF gs = {} \/ ~Open(r) THEN <<None, NoBlock>>
       ELSE LET g == Max(gs) IN <<g, CHOOSE v \in Values : <<r, g, v>> \in writes>>

-----------------------------------------------------------------------------
(* Fallback helpers.                                                       *)

LastH(r) == base[r] + Len(log[r])
LastTerm(r) == IF log[r] = <<>> THEN 0 ELSE log[r][Len(log[r])].t
ChainOf(lg, b, fin, h) == [k \in 1 .. h |-> IF k <= b THEN fin ELSE lg[k - b].v]
ChainAt(r, h) == ChainOf(log[r], base[r], decided[r], h)
TLast(t) == tlog[t].b + Len(tlog[t].es)
TChainAt(t, h) == ChainOf(tlog[t].es, tlog[t].b, tlog[t].fin, h)
NewCommits(lg, b, fin, c0, c1) == {<<h, ChainOf(lg, b, fin, h)>> : h \in c0 + 1 .. c1}

\* RaftCore.report: the log up to its last entry of an elected term, with that
\* term's election proof (trailing tentative entries are BFT votes).
Report(r) ==
    LET keep == {i \in 0 .. Len(log[r]) : i = 0 \/ ~log[r][i].tent}
        k == Max(keep)
    IN IF k = 0 \/ base[r] # 0 \/ lastElect[r] # log[r][k].t THEN NoReport
       ELSE <<log[r][k].t, [i \in 1 .. k |-> log[r][i].v]>>

-----------------------------------------------------------------------------
(* STOP-DATA and SYNC (BftCore.tla, plus the fallback report).            *)

\* A Byzantine STOP-DATA may claim any WRITE of its own below the regency.
ByzStopData(g) ==
    {<<b, g, dh, pg, pv, rep, wg, wv>> :
        b \in Byz, dh \in {0, 1}, pg \in {None} \cup Regencies,
        pv \in {NoBlock} \cup Values, rep \in {NoReport} \cup Reports,
        wg \in {None} \cup {x \in Regencies : x < g}, wv \in {NoBlock} \cup Values}
ProvableClaim(e) ==
    /\ e[3] = 0 \/ \E v \in Values : Certified(v)
    /\ \/ e[4] = None /\ e[5] = NoBlock
       \/ e[4] # None /\ e[5] # NoBlock /\ e[4] < e[2] /\ e[3] = 0 /\ WriteProof(e[4], e[5])
    /\ (e[7] = None) = (e[8] = NoBlock)
NoClaim(g) == <<None, g, 0, None, NoBlock, NoReport, None, NoBlock>>
\* ByzClaims(g) is {e \in ByzStopData(g) : ProvableClaim(e)} plus NoClaim(g),
\* built from the certificates and write proofs that exist, each looked up once
\* instead of once for each of the 1,404 candidates of a model with one Byzantine
\* replica: TLC evaluates it for every SYNC weighed.  ByzClaimsExact (checked in
\* claims_exact_fallback) says they agree.
ByzClaims(g) ==
    LET dhs == {dh \in {0, 1} : dh = 0 \/ \E v \in Values : Certified(v)}
        below == {x \in Regencies : x < g}
        proofs(dh) ==
            {<<None, NoBlock>>} \cup
            IF dh # 0 THEN {} ELSE {p \in below \X Values : WriteProof(p[1], p[2])}
        claimed == UNION {{dh} \X proofs(dh) : dh \in dhs}
        wrote == {<<None, NoBlock>>} \cup (below \X Values)
    IN {<<b, g, x[1], x[2][1], x[2][2], rep, w[1], w[2]>> :
            b \in Byz, x \in claimed, rep \in {NoReport} \cup Reports, w \in wrote}
       \cup {NoClaim(g)}

StopDataQuorums(g) ==
    LET claims == ByzClaims(g)
        honest == {e \in stopdata : e[2] = g}
    IN {S \in {H \cup {c[b] : b \in {x \in Byz : c[x][1] = x}} :
                H \in SUBSET honest, c \in [Byz -> claims]} :
            Cardinality(S) = Quorum /\ Cardinality({e[1] : e \in S}) = Quorum}

\* _sync_choice: the block of the highest-regency write proof at height 1.
ProofBlock(S) ==
    LET P == {e \in S : e[3] = 0 /\ e[4] # None}
    IN IF P = {} THEN NoBlock
       ELSE LET top == Max({e[4] : e \in P}) IN CHOOSE v \in Values : \E e \in P : e[4] = top /\ e[5] = v

\* BftReplica._written_choice: the blocks WRITTEN in the highest regency any of the
\* STOP-DATAs S reports a WRITE for (several only if a Byzantine leader equivocated or
\* a Byzantine replica lies; Python takes the highest digest, here any).
WrittenBlocks(S) ==
    LET W == {e \in S : e[3] = 0 /\ e[7] # None}
    IN IF W = {} THEN {}
       ELSE LET top == Max({e[7] : e \in W}) IN {e[8] : e \in {x \in W : x[7] = top}}

\* What a leader's SYNC for the STOP-DATA quorum S may carry: <<block, suffix, pv>>.
\* BftReplica._maybe_sync and _choose_suffix: the most up-to-date report (Raft's
\* order: term, then last height; ties by digest, here any), whose height-1 block is
\* re-proposed unless a write proof names another block, which wins (S1 first).
\* With neither, the block WRITTEN in the highest regency the STOP-DATAs report (S2:
\* a block some quorum WROTE may hold a write proof outside S, which a later SYNC
\* will pick; every quorum S shares an honest writer with it); only with no WRITE
\* at all is the block free.
\* reports: the reports the leader weighs (its own fresh one instead of its STOP-DATA's).
SyncOptions(S, reports) ==
    LET pv == ProofBlock(S)
        reps == reports \ {NoReport}
        best == {x \in reps : \A y \in reps : GE(<<x[1], Len(x[2])>>, <<y[1], Len(y[2])>>)}
    IN IF {e[3] : e \in S} # {0} THEN {}   \* someone decided height 1: a later height's SYNC
       ELSE IF pv # NoBlock THEN
            IF MUTATE_SUFFIX_OVER_PROOF /\ best # {} THEN {<<x[2][1], x, pv>> : x \in best}
            ELSE {<<pv, IF x[2][1] = pv THEN x ELSE NoReport, pv>> : x \in best}
                 \cup (IF best = {} THEN {<<pv, NoReport, pv>>} ELSE {})
       ELSE IF best # {} THEN {<<x[2][1], x, NoBlock>> : x \in best}
       ELSE IF WrittenBlocks(S) # {} /\ ~MUTATE_SYNC_IGNORES_WRITES
            THEN {<<v, NoReport, NoBlock>> : v \in WrittenBlocks(S)}
       ELSE {<<v, NoReport, NoBlock>> : v \in Values}

HonestSyncOptions(r, S) ==
    SyncOptions(S, {e[6] : e \in {x \in S : x[1] # r}} \cup {Report(r)})

\* The SYNCs a follower in regency g may receive: <<block, suffix, pv, fromHonest>>.
SyncsSent(g) ==
    IF Leader(g) \in Byz
    THEN {<<o[1], NoReport, o[3], FALSE>> :
            o \in UNION {SyncOptions(S, {e[6] : e \in S}) : S \in StopDataQuorums(g)}}
    ELSE {<<s[2], s[3], s[4], TRUE>> : s \in {x \in syncs : x[1] = g}}

\* ModeController._fallback_conflict: r's own fallback log is more up to date
\* than what the SYNC re-certifies, and no write proof overrules it.
Conflict(r, v, sfx, pv) ==
    LET rep == Report(r) IN
    IF rep = NoReport THEN FALSE
    ELSE LET mine == rep[2]
             chain == <<v>> \o (IF sfx = NoReport THEN <<>> ELSE Tail(sfx[2]))
             prefix == Len(mine) <= Len(chain) /\ \A i \in 1 .. Len(mine) : mine[i] = chain[i]
             theirs == IF sfx = NoReport THEN <<0, 0>> ELSE <<sfx[1], Len(sfx[2])>>
         IN /\ ~prefix
            /\ pv = NoBlock \/ pv = mine[1]
            /\ GT(<<rep[1], Len(mine)>>, theirs)

-----------------------------------------------------------------------------

\* Regency 0 is in the initial states: every set of regency-0 WRITEs and ACCEPTs
\* the BFT rules allow (an honest leader proposes one block, WLOG the first by
\* the symmetry of blocks; each honest replica WRITEs at most one proposed
\* block and ACCEPTs only over a write proof) is sent before anything else
\* happens.  This drops only interleavings: a replica WRITEs and ACCEPTs at
\* regency 0 before it enters fallback, and nothing any other replica does
\* reads the absence of a message (write proofs and certificates are monotone).
First == CHOOSE v \in Values : TRUE

\* The BFT messages of those initial states, one record each: the blocks w the
\* honest replicas WROTE (NoBlock: none) and the writers A of them that ACCEPTed.
\* FallbackInitInBftCore.tla checks that BftCore.tla reaches each of them.
InitBft ==
    LET honestLeader == Leader(0) \notin Byz
        writersOf(w) == {r \in Honest : w[r] # NoBlock}
        starts == {w \in [Honest -> {NoBlock} \cup Values] :
                      /\ honestLeader => \A r \in writersOf(w) : w[r] = First
                      /\ honestLeader /\ writersOf(w) # {} => Leader(0) \in writersOf(w)
                      /\ FixedStart => writersOf(w) = Writers0 \cap Honest}
        votes(w, rs) == {<<r, 0, w[r]>> : r \in rs}
        \* WriteProof(0, v) over the WRITEs of w
        proofFor(w, v) ==
            Cardinality(Byz) + Cardinality({r \in writersOf(w) : w[r] = v}) >= Quorum
    IN UNION {{[proposes |-> IF honestLeader /\ writersOf(w) # {} THEN {<<0, First>>} ELSE {},
                writes |-> votes(w, writersOf(w)),
                accepts |-> votes(w, A)] :
                  A \in {X \in SUBSET {r \in writersOf(w) : proofFor(w, w[r])} :
                            FixedStart => X = Accepters0 \cap Honest}} :
              w \in starts}

Init ==
    /\ regency = [r \in Honest |-> 0]
    /\ inSync = [r \in Honest |-> FALSE]
    /\ decided = [r \in Honest |-> NoBlock]
    /\ \E s \in InitBft : proposes = s.proposes /\ writes = s.writes /\ accepts = s.accepts
    /\ stopdata = {} /\ syncs = {}
    /\ mode = [r \in Honest |-> "bft"]
    /\ entryRegency = [r \in Honest |-> 0]
    /\ term = [r \in Honest |-> 0]
    /\ voted = [r \in Honest |-> None]
    /\ role = [r \in Honest |-> "follower"]
    /\ log = [r \in Honest |-> <<>>]
    /\ base = [r \in Honest |-> 0]
    /\ commitH = [r \in Honest |-> 0]
    /\ proven = [r \in Honest |-> NoBlock]
    /\ lastElect = [r \in Honest |-> 0]
    /\ tlog = [t \in Terms |-> [b |-> -1, fin |-> NoBlock, es |-> <<>>]]
    /\ tcommit = [t \in Terms |-> 0]
    /\ ackH = [r \in Honest |-> [t \in Terms |-> 0]]
    /\ pcommits = {}

\* Leaving fallback (ModeController._bft_works): BFT decided, or a regency
\* newer than the one the epoch started in got past its SYNC.
BackToBft(r, g, synced, dec) ==
    IF mode[r] = "fallback" /\ (dec # NoBlock \/ (g > entryRegency[r] /\ synced))
    THEN /\ mode' = [mode EXCEPT ![r] = "bft"]
         /\ role' = [role EXCEPT ![r] = "follower"]
    ELSE UNCHANGED <<mode, role>>

-----------------------------------------------------------------------------
(* BFT actions (BftCore.tla at height 1).                                 *)

\* _on_propose: in fallback the controller drops PROPOSE/WRITE/ACCEPT of the
\* stalled regency, so only a replica in BFT mode WRITEs or ACCEPTs.
Write(r, v) ==
    LET g == regency[r] IN
    /\ g > 0 /\ mode[r] = "bft" /\ ~inSync[r] /\ Open(r)
    /\ Proposed(g, v) /\ ~HasWritten(r, g)
    /\ writes' = writes \cup {<<r, g, v>>}
    /\ UNCHANGED <<regency, inSync, decided, proposes, accepts, stopdata, syncs, mode,
                   entryRegency, raftVars, msgVars, pcommits>>

Accept(r, v) ==
    LET g == regency[r] IN
    /\ g > 0 /\ mode[r] = "bft" /\ Open(r) /\ <<r, g, v>> \in writes /\ WriteProof(g, v)
    /\ \A w \in Values : <<r, g, w>> \notin accepts
    /\ accepts' = accepts \cup {<<r, g, v>>}
    /\ UNCHANGED <<regency, inSync, decided, proposes, writes, stopdata, syncs, mode,
                   entryRegency, raftVars, msgVars, pcommits>>

\* _decide / _on_blocks, in either mode; then RaftCore._rebase: the log drops
\* height 1, and is emptied if its block there is not the decided one.
Decide(r, v) ==
    /\ Open(r)
    /\ \E g \in Regencies :
        /\ CertifiedIn(g, v)
        /\ inSync' = IF g = regency[r] THEN [inSync EXCEPT ![r] = FALSE] ELSE inSync
    /\ decided' = [decided EXCEPT ![r] = v]
    /\ log' = [log EXCEPT ![r] = IF log[r] # <<>> /\ log[r][1].v = v THEN Tail(log[r]) ELSE <<>>]
    /\ base' = [base EXCEPT ![r] = 1]
    /\ commitH' = [commitH EXCEPT ![r] = Max2(commitH[r], 1)]
    /\ proven' = [proven EXCEPT ![r] = NoBlock]
    /\ BackToBft(r, regency[r], TRUE, v)
    /\ UNCHANGED <<regency, proposes, writes, accepts, stopdata, syncs, entryRegency,
                   term, voted, lastElect, msgVars, pcommits>>

\* _start_regency_change / _install_regency: a timeout in BFT mode, or the heal
\* (ModeController._maybe_heal) in fallback; the STOP-DATA carries the report.
Stop(r) ==
    LET g == regency[r] + 1
        dh == IF Open(r) THEN 0 ELSE 1
        proof == IF Open(r) THEN BestProof(r) ELSE <<None, NoBlock>>
        wrote == LastWrite(r) IN
    /\ g \in Regencies
    /\ regency' = [regency EXCEPT ![r] = g]
    /\ inSync' = [inSync EXCEPT ![r] = TRUE]
    /\ stopdata' = stopdata \cup {<<r, g, dh, proof[1], proof[2], Report(r), wrote[1], wrote[2]>>}
    /\ UNCHANGED <<decided, proposes, writes, accepts, syncs, mode, entryRegency,
                   raftVars, msgVars, pcommits>>

\* _maybe_sync: the leader sends a justified SYNC and WRITEs its block.  In
\* fallback it waits until q replicas hear each other (abstracted: any time).
Sync(r) ==
    LET g == regency[r] IN
    /\ Leader(g) = r /\ inSync[r] /\ Open(r)
    /\ \E S \in StopDataQuorums(g) : \E o \in HonestSyncOptions(r, S) :
        /\ syncs' = syncs \cup {<<g, o[1], o[2], o[3]>>}
        /\ writes' = writes \cup {<<r, g, o[1]>>}
    /\ inSync' = [inSync EXCEPT ![r] = FALSE]
    /\ BackToBft(r, g, TRUE, NoBlock)
    /\ UNCHANGED <<regency, decided, proposes, accepts, stopdata, entryRegency,
                   term, voted, log, base, commitH, proven, lastElect, msgVars, pcommits>>

\* _on_sync: a follower checks the SYNC, refuses it if its own fallback log is
\* more up to date (_fallback_conflict; only for an honest leader's SYNC, whose
\* suffix is known: skipping the check gives more behaviours), WRITEs the block.
FollowSync(r) ==
    LET g == regency[r] IN
    /\ inSync[r] /\ Leader(g) # r
    /\ \E s \in SyncsSent(g) :
        /\ (Open(r) /\ s[4]) => ~Conflict(r, s[1], s[2], s[3])
        /\ writes' = IF Open(r) /\ ~HasWritten(r, g) THEN writes \cup {<<r, g, s[1]>>}
                     ELSE writes
    /\ inSync' = [inSync EXCEPT ![r] = FALSE]
    /\ BackToBft(r, g, TRUE, NoBlock)
    /\ UNCHANGED <<regency, decided, proposes, accepts, stopdata, syncs, entryRegency,
                   term, voted, log, base, commitH, proven, lastElect, msgVars, pcommits>>

-----------------------------------------------------------------------------
(* The mode controller and the fallback core.                              *)

\* ModeController._transition(STALLED) and RaftCore.activate.  The stall rule
\* is abstracted to "at any time".  Terms start above the regency; the block r
\* WROTE or holds a write proof for at the open height (the highest regency,
\* a proof before a bare WRITE) becomes a tentative entry whose term is that
\* regency (_tentative_entry).
EnterFallback(r) ==
    LET g == regency[r]
        cands == IF ~Open(r) \/ MUTATE_NO_TENTATIVE THEN {}
                 ELSE {<<a[2], TRUE, a[3]>> : a \in {x \in accepts : x[1] = r}}
                      \cup {<<w[2], FALSE, w[3]>> : w \in {x \in writes : x[1] = r}}
        best == {c \in cands : \A d \in cands : c[1] > d[1] \/ (c[1] = d[1] /\ (c[2] \/ ~d[2]))}
    IN
    /\ mode[r] = "bft" /\ r \in FallbackSet
    /\ mode' = [mode EXCEPT ![r] = "fallback"]
    /\ entryRegency' = [entryRegency EXCEPT ![r] = g]
    /\ role' = [role EXCEPT ![r] = "follower"]
    /\ term' = [term EXCEPT ![r] = Max2(term[r], g)]
    /\ voted' = [voted EXCEPT ![r] = IF g > term[r] THEN None ELSE voted[r]]
    /\ IF best = {}
       THEN /\ proven' = [proven EXCEPT ![r] = NoBlock]
            /\ UNCHANGED <<log, commitH>>
       ELSE LET c == CHOOSE x \in best : TRUE
                e == [t |-> c[1], v |-> c[3], tent |-> TRUE]
                replaces == log[r] # <<>> /\ log[r][1].v # e.v
                log1 == IF c[2] /\ replaces /\ commitH[r] < 1 THEN <<>> ELSE log[r]
                log2 == IF log1 = <<>> THEN <<e>> ELSE log1
            IN /\ log' = [log EXCEPT ![r] = log2]
               /\ proven' = [proven EXCEPT ![r] = IF c[2] /\ log2[1] = e THEN e.v ELSE NoBlock]
               /\ UNCHANGED commitH
    /\ UNCHANGED <<bftVars, base, lastElect, msgVars, pcommits>>

\* RaftCore._on_request_vote: the candidate's BFT-final height is at least the
\* voter's, its log at least as up to date, and it holds the block the voter
\* has a write proof for.
VoteOk(v, c) ==
    \/ MUTATE_VOTE_ANY
    \/ /\ base[c] >= base[v]
       /\ GE(<<LastTerm(c), LastH(c)>>, <<LastTerm(v), LastH(v)>>)
       /\ \/ proven[v] = NoBlock
          \/ base[c] >= 1
          \/ log[c] # <<>> /\ log[c][1].v = proven[v]

\* RaftCore._campaign, _on_request_vote and _maybe_win as one step: c moves to
\* a higher term t and wins it with the grants of the honest voters Q
\* (Byzantine replicas grant everyone).  A grant needs the voter in fallback,
\* not yet voted for another in term t, and VoteOk.  Abstractions, each of
\* which drops interleavings or adds behaviours, never removes one:
\* - grants and the win in one step: a grant depends on the candidate's log,
\*   which no step changes while it campaigns, and a voter's later steps
\*   commute with the win;
\* - failed campaigns and the term a replica learns from a message it refuses
\*   (_dispatch) are left out: they only raise terms, which makes replicas
\*   refuse lower-term messages and leaders step down, both of which only
\*   disable steps; instead a candidate may jump to any higher term, and a
\*   leader may campaign too (a stale leader that stepped down).
Elect(c, Q, t) ==
    /\ mode[c] = "fallback" /\ c \in CandidateSet /\ t > term[c] /\ c \notin Q
    /\ \A v \in Q :
        /\ mode[v] = "fallback"
        /\ t > term[v] \/ (t = term[v] /\ voted[v] \in {None, c})
        /\ VoteOk(v, c)
    /\ Cardinality(Q \cup {c} \cup Byz) >= Majority
    /\ term' = [r \in Honest |-> IF r \in Q \cup {c} THEN t ELSE term[r]]
    /\ voted' = [r \in Honest |-> IF r \in Q \cup {c} THEN c ELSE voted[r]]
    /\ role' = [r \in Honest |-> IF r = c THEN "leader"
                                ELSE IF r \in Q THEN "follower" ELSE role[r]]
    /\ tlog' = [tlog EXCEPT ![t] = [b |-> base[c], fin |-> decided[c], es |-> log[c]]]
    /\ UNCHANGED <<bftVars, mode, entryRegency, log, base, commitH, proven, lastElect,
                   tcommit, ackH, pcommits>>

\* An honest voter grants a Byzantine candidate of term t (its claims pass any check).
ByzRequestVote(v, t) ==
    /\ Byz # {} /\ mode[v] = "fallback" /\ t \in Terms
    /\ t > term[v] \/ (t = term[v] /\ voted[v] \in {None} \cup Byz)
    /\ term' = [term EXCEPT ![v] = t]
    /\ voted' = [voted EXCEPT ![v] = CHOOSE b \in Byz : TRUE]
    /\ role' = [role EXCEPT ![v] = "follower"]
    /\ UNCHANGED <<bftVars, mode, entryRegency, log, base, commitH, proven, lastElect,
                   msgVars, pcommits>>

\* _maybe_propose: one uncommitted block at a time, except the entry of its own
\* term a new leader appends at once (force) to commit the ones before it.
LeaderAppend(r, v) ==
    LET t == term[r] IN
    /\ mode[r] = "fallback" /\ role[r] = "leader" /\ LastH(r) < MaxLog
    /\ LastH(r) = commitH[r] \/ LastTerm(r) # t
    /\ log' = [log EXCEPT ![r] = Append(log[r], [t |-> t, v |-> v, tent |-> FALSE])]
    /\ tlog' = [tlog EXCEPT ![t].es = Append(tlog[t].es, [t |-> t, v |-> v, tent |-> FALSE])]
    /\ lastElect' = [lastElect EXCEPT ![r] = t]
    /\ UNCHANGED <<bftVars, mode, entryRegency, term, voted, role, base, commitH, proven,
                   tcommit, ackH, pcommits>>

\* _leader_commit: an entry of the leader's own term held by a majority.
LeaderCommit(r, k) ==
    LET t == term[r] IN
    /\ mode[r] = "fallback" /\ role[r] = "leader"
    /\ k > commitH[r] /\ k <= LastH(r) /\ log[r][k - base[r]].t = t
    /\ Cardinality({r} \cup Byz \cup {s \in Honest : ackH[s][t] >= k}) >= Majority
    /\ commitH' = [commitH EXCEPT ![r] = k]
    /\ tcommit' = [tcommit EXCEPT ![t] = k]
    /\ pcommits' = pcommits \cup NewCommits(log[r], base[r], decided[r], commitH[r], k)
    /\ decided' = IF MUTATE_FINAL_ON_MAJORITY /\ base[r] = 0 /\ decided[r] = NoBlock
                  THEN [decided EXCEPT ![r] = log[r][1].v] ELSE decided
    /\ UNCHANGED <<regency, inSync, proposes, writes, accepts, stopdata, syncs, mode,
                   entryRegency, term, voted, role, log, base, proven, lastElect,
                   tlog, ackH>>

\* _on_append: term t's AppendEntries with entries prev+1..k of tlog[t], where
\* prev is the highest height at which r's chain matches the leader's: an append
\* from a lower prev skips the equal entries up to there, one from a higher prev
\* is refused and changes nothing, so one prev per (t, k) gives every outcome.
\* Entries equal to the held ones are skipped; at the first that differs the
\* log is truncated, unless the held entry is committed or write-proven (then
\* the append is refused, which changes nothing, so such k are not enabled).
FollowerAppend(r, t, k) ==
    LET tb == tlog[t].b
        matches == {h \in Max2(base[r], tb) .. Min2(Min2(LastH(r), k), TLast(t)) :
                        ChainAt(r, h) = TChainAt(t, h)}
        prev == IF matches = {} THEN -1 ELSE Max(matches)
        diff == {h \in prev + 1 .. k : h > LastH(r) \/ log[r][h - base[r]] # tlog[t].es[h - tb]}
        d == IF diff = {} THEN k + 1 ELSE CHOOSE h \in diff : \A x \in diff : h <= x
        held == IF d <= k /\ d <= LastH(r) THEN log[r][d - base[r]] ELSE NoBlock
        newLog == IF d > k THEN log[r]
                  ELSE SubSeq(log[r], 1, d - 1 - base[r]) \o SubSeq(tlog[t].es, d - tb, k - tb)
        newLast == base[r] + Len(newLog)
        c1 == Max2(commitH[r], Min2(Min2(tcommit[t], k), newLast))
        appendedOwn == \E h \in d .. k : tlog[t].es[h - tb].t = t
    IN
    /\ mode[r] = "fallback" /\ tb >= 0 /\ t >= term[r] /\ k <= TLast(t)
    /\ prev >= 0
    /\ held # NoBlock =>
        /\ ~(held.t = tlog[t].es[d - tb].t /\ ~held.tent /\ ~tlog[t].es[d - tb].tent)
        /\ d > commitH[r]
        /\ ~(d = 1 /\ proven[r] = held.v)
    /\ log' = [log EXCEPT ![r] = newLog]
    /\ term' = [term EXCEPT ![r] = t]
    /\ voted' = [voted EXCEPT ![r] = IF t > term[r] THEN None ELSE voted[r]]
    /\ role' = [role EXCEPT ![r] = "follower"]
    /\ lastElect' = [lastElect EXCEPT ![r] = IF appendedOwn THEN t ELSE lastElect[r]]
    /\ commitH' = [commitH EXCEPT ![r] = c1]
    /\ ackH' = [ackH EXCEPT ![r][t] = Max2(@, k)]
    /\ pcommits' = pcommits \cup NewCommits(newLog, base[r], decided[r], commitH[r], c1)
    /\ decided' = IF MUTATE_FINAL_ON_MAJORITY /\ base[r] = 0 /\ decided[r] = NoBlock /\ c1 >= 1
                  THEN [decided EXCEPT ![r] = newLog[1].v] ELSE decided
    /\ UNCHANGED <<regency, inSync, proposes, writes, accepts, stopdata, syncs, mode,
                   entryRegency, base, proven, tlog, tcommit>>

Next ==
    \E r \in Honest :
        \/ \E v \in Values : Write(r, v) \/ Accept(r, v) \/ Decide(r, v)
        \/ Stop(r) \/ Sync(r) \/ FollowSync(r)
        \/ EnterFallback(r) \/ \E Q \in SUBSET (Honest \ {r}), t \in Terms : Elect(r, Q, t)
        \/ \E t \in Terms : ByzRequestVote(r, t)
        \/ \E v \in Values : LeaderAppend(r, v)
        \/ \E k \in 1 .. MaxLog : LeaderCommit(r, k)
        \/ \E t \in Terms, k \in 0 .. MaxLog : FollowerAppend(r, t, k)

Spec == Init /\ [][Next]_vars

-----------------------------------------------------------------------------
(* Properties.                                                             *)

SentByHonest == \A m \in writes \cup accepts : m[1] \in Honest

TypeOK ==
    /\ SentByHonest
    /\ regency \in [Honest -> Regencies]
    /\ decided \in [Honest -> Values \cup {NoBlock}]
    /\ mode \in [Honest -> {"bft", "fallback"}]
    /\ term \in [Honest -> Terms]
    /\ log \in [Honest -> Seq(Entries)]
    /\ \A r \in Honest : LastH(r) <= MaxLog /\ base[r] <= commitH[r]

\* ByzClaims is the set its comment says.
ByzClaimsExact ==
    \A g \in Regencies :
        ByzClaims(g) = {e \in ByzStopData(g) : ProvableClaim(e)} \cup {NoClaim(g)}

\* S1: no two honest replicas hold different FINAL blocks at height 1.
Agreement ==
    \A r1, r2 \in Honest :
        decided[r1] # NoBlock /\ decided[r2] # NoBlock => decided[r1] = decided[r2]

\* S2 (claimed for Byz = {}): provisional commits agree with each other and
\* with every FINAL block, so none is ever rolled back.
ProvisionalAgreement ==
    \A x, y \in pcommits : x[1] = y[1] => x[2] = y[2]
ProvisionalNeverRolledBack ==
    \A x \in pcommits, r \in Honest : decided[r] # NoBlock => x[2][1] = decided[r]
S2 == ProvisionalAgreement /\ ProvisionalNeverRolledBack

\* A witness, not a property: it is false once a provisional commit and a FINAL
\* block exist together, the states S2 is about.  A model expecting it violated
\* shows the sampled behaviours reach them (the samples are not vacuous).
NoCommitAndFinal == ~(pcommits # {} /\ \E r \in Honest : decided[r] # NoBlock)

-----------------------------------------------------------------------------
(* A scenario family for directed searches (CONSTRAINT / ACTION_CONSTRAINT):  *)
(* the S2 corner.  Until a provisional commit exists, replica 0 (which holds  *)
(* the regency-0 write proof) stays at regency 0, nobody ACCEPTs above       *)
(* regency 0 and no replica passes regency 1; afterwards the fallback is     *)
(* frozen (no election, append, commit or entry) while the heal runs.        *)
(* CornerNotFirst also asks the regency-1 SYNC for a block other than the    *)
(* regency-0 proposal.  Each prunes behaviours, so a violation found under   *)
(* them is one of the whole model's.                                         *)
CornerState ==
    pcommits = {} =>
        /\ regency[0] = 0
        /\ \A x \in accepts : x[2] = 0
        /\ \A r \in Honest : regency[r] <= 1
\* Tighter: only the regency-1 leader WRITEs at regency 1, and it sits out the heal.
CornerLeaderOnly ==
    /\ CornerState
    /\ pcommits = {} => \A w \in writes : w[2] = 1 => w[1] = Leader(1)
    /\ regency[Leader(1)] <= 1
CornerNotFirst == CornerLeaderOnly /\ \A s \in syncs : s[1] = 1 => s[2] # First
CornerAction ==
    pcommits # {} =>
        /\ UNCHANGED <<term, tlog, ackH, tcommit>>
        /\ \A r \in Honest : mode'[r] = "fallback" => mode[r] = "fallback"

\* The blocks are interchangeable (every CHOOSE over Values has one candidate).
ValueSymmetry == Permutations(Values)

=============================================================================
