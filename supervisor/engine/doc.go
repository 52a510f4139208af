// Package engine decides the elections of one member: for every life it
// campaigns for, which step to take next, what the step's Txn is, and what
// its answer means. It is the supervisor's state as plain data: no lock, no
// goroutine, no timer and no etcd call. Events go in as method calls (a
// request put or deleted, a new member view, the deletions the election
// watch saw, a batch's answer, a Run that returned, a session opened or
// lost, the sweep); effects come out as Txns to send (Take, Prepare) and as
// calls of Effects (wake the loop, start, stop or kill a Run). Time comes
// from Config.Now. The supervisor drives it under one mutex, as etcd's raft
// package is driven through its RawNode: it sends what Prepare returns and
// gives the answer back to Answer.
//
// # Phases
//
// Each life this member campaigns for has one candidacy per session, in
// one of five phases. Every arrow is one function of candidacy.go, the
// only place where a phase changes:
//
//	            win            run                beginHandoff
//	Campaigning ───> Starting ───> Running ──────────────────> HandingOff
//	  ^    │           │            │  ^                          │
//	  │    │withdraw   │stop    stop│  └────────── rehold ────────┤
//	  │    v           v            v                             │stop
//	  │  CleaningUp <──┴────────────┴─────────────────────────────┘
//	  │    │
//	  └────┘cleaned
//
// and back to Campaigning from the right: unwin (Starting: the first write
// found the record or the heartbeat moved, or the fence gone), lose
// (Starting, Running, HandingOff: the election key was deleted or a fenced
// write failed), handedOff (HandingOff: the handoff was applied). A life
// that is not started (the session is ending) goes back too.
//
//   - Campaigning: the member wants the life (or withdraws from it): it
//     creates its candidacy key elections/<name>/<lease-hex>, or waits
//     behind the keys in front of it. A candidacy no longer wanted and
//     holding no key is forgotten.
//   - Starting: the member leads; the first write (the running record,
//     guarded by the fence and by the old holder's heartbeat) is owed.
//   - Running: the member holds the life: it ages, its work runs, and the
//     member's heartbeat carries its record forward. Only Running lives are
//     in Held and HeldLives.
//   - HandingOff: the life stopped when the handoff Txn was prepared (its
//     Run returned before that); the Txn writes its final record and
//     resigns, if the preferred member is next in line.
//   - CleaningUp: the life stopped (its final record or the deletion of its
//     records is owed) or the member withdrew (its key is owed).
//
// At most one step of a candidacy is in flight at a time (from Take to
// Answer), so the steps of one life are applied in the order they were
// decided.
//
// # Guarantees
//
//   - A life runs only after its first fenced write was applied, and stops
//     (leaves Held) before any Txn that writes its final record is sent:
//     such Txns come in ordered batches (Batch.Ordered), which the driver
//     never has in flight together with a heartbeat.
//   - Every write of a holder is fenced by its election key's create
//     revision and the request's (Life.Fence).
//   - An answer of an ended session changes nothing, and no life runs once
//     TakeAllHeld gave the session up; every Run that has not returned by
//     then has been told to stop at once.
//   - No Run of a life starts while a Run of an earlier hold of the same
//     name in this member has not returned, and a graceful stop (a handoff,
//     a clean-up) waits for the Run to return, or for the driver to give it
//     up (RunAbandoned: it ignored its stop past the driver's bound). A
//     life whose Run was given up is stopped here (last age written, key
//     resigned), and the member does not campaign for it until that Run
//     returns.
//   - A transition taken from a phase it does not leave panics: it is a bug
//     of the engine, not a state to go on from.
//
// The tests drive the engine without etcd: each race that once cost a bug
// has its own test, and a randomized test applies random events and
// answers and checks these rules after every step.
package engine
