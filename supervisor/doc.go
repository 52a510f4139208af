// Package supervisor runs the lives of one member.
//
// For every wanted life (delivered by registry.Watch) that rendezvous
// placement makes this member a candidate for, the supervisor campaigns on
// the member's one lease.Session and runs the life while it holds it. The
// elections use concurrency.Election's keys and rule (elections/<name>/
// <lease-hex>; the lowest create revision leads) but run in batches: one
// Txn carries the election step of up to 120 lives, each in a nested Txn,
// and one watch of deletions under elections/ wakes waiting candidates, so
// a life costs a small struct, not a goroutine, a Txn and a watch. A
// life's state is its age: it counts the time the life runs,
// in memory. Its record, ages/<name>, is written when it starts (its age,
// the member's lease and the member's clock then) and when it stops; every
// checkpoint interval the member writes one heartbeat, heartbeats/
// <lease-hex>, with its clock, which carries every record on that lease
// forward (see heartbeat.go). The checkpoint load is one write per member
// per interval, whatever the number of lives.
//
// What to do next for each life is decided by package engine (its phases,
// its Txns and what their answers mean, without etcd or goroutines); this
// package drives it: one mutex guards the engine and is never held across
// a request to etcd. The goroutines of a session are the election loop
// (elect.go: takes the ready steps in batches and sends them), the watches
// of elections/ and ages/ (elect.go, repair.go), the heartbeat loop
// (heartbeat.go), the state writer (work.go), the member record's updater
// and the lane (lane.go), which runs the ordered writes one at a time: a
// life's final record, the heartbeats and the repairs of age records, so
// that no heartbeat carries a life past its final record.
//
// A life's kind (Config.Kinds, see package workload) may also give it work:
// a Runner whose Run the member calls while it holds the life, with a
// Handle carrying the fencing token (the election key's create revision)
// and the state restored from states/<name>, and whose checkpoints go to
// states/<name> in fenced, batched writes (see work.go). A kind whose New
// is nil, as the built-in "age", has no work: its lives cost what they cost
// before kinds existed. A member campaigns only for lives of its kinds.
//
// Guarantees:
//   - One writer. Every age record write is a Txn guarded by
//     CreateRevision(own election key) == own revision and
//     CreateRevision(lives/<name>) == life id; a failed guard stops that life
//     at once, and lives batched with it are unaffected (each has its own
//     nested Txn). A heartbeat is guarded by the member record being on the
//     session's lease, so a member whose lease has expired cannot make its
//     lives older.
//   - One runner. When the session's safe deadline passes (see package
//     lease), every life is stopped before the server can expire the lease,
//     and no heartbeat is taken after that; then a new session is opened and
//     the member campaigns again.
//   - A candidate leads only when a Txn finds its own key first in the
//     election, in the same snapshot that reads the request, the age record
//     and the heartbeats; a key on an expired lease cannot be created (etcd
//     #11051). Its first write requires the old holder's heartbeat unchanged.
//   - Placement never decides who runs a life, only who campaigns: a handoff
//     is one fenced Txn that also checks that the preferred member is next.
//   - Age never goes backwards: a life resumes from the age record of the
//     same life id carried forward to its old holder's last heartbeat; a
//     record of another life id, or one that does not parse, is never
//     resumed. Bytes that do not parse, or that someone else wrote, are
//     copied to quarantine/<name> before being replaced (found at the
//     holder's next write or sweep).
//   - A crash loses at most the time since the member's last heartbeat, and
//     a member runs no life longer than a lease TTL past its last applied
//     heartbeat: while heartbeats fail it is not ready, and after a TTL it
//     gives the session up (every life stops) and opens a new one.
//   - Keys the member relies on, changed by someone else, are found within
//     one checkpoint interval: a deleted member record or heartbeat is
//     written again by the next heartbeat (in its Txn, on the live lease);
//     a member record on another lease, or etcd at a revision before the
//     last heartbeat (restored from older data), ends the session. An age
//     record of a held life is repaired through the watch of ages/.
//   - A lease ends before its TTL only by its own member's revoke (a
//     graceful stop, a lost session) or by its watchdog's once the member
//     process is dead (package watchdog): every holder's write is guarded
//     by a key on the lease (clean-up deletes by the revision they read),
//     so a request of the dead member that etcd applies after the revoke
//     fails, as it would after the lease's expiry.
//   - A peer's lease is revoked by this member only once etcd's own
//     answers prove it expired (expiry.go, lease.WaitExpired): what etcd's
//     leader does itself at its next look for expired leases, up to 500 ms
//     later. Each member watches the leases of the two members after it in
//     id order.
//   - Shutdown stops every life, writes one last heartbeat and revokes the
//     lease with a fresh context, so peers take over at once and resume
//     each life at the age it stopped at.
//   - Work runs only while held. A graceful stop (handoff, shutdown, delete)
//     cancels Run with workload.ErrStopped and keeps the election key and
//     the lease until Run returns (its kind's StopGrace plus a checkpoint
//     round, then Expired closes), so the next holder restores the final
//     state. At the safe deadline, a lost session or a lost life, Expired
//     closes and Run is cancelled with workload.ErrDeadline at once, before
//     the server can expire the lease. This member starts no new hold of a
//     life before the Run of its previous hold here returned.
//   - A state write is guarded as the age record is; a failed guard fails
//     the Checkpoint with workload.ErrFenced and, when the election key is
//     no longer the holder's, stops the life.
//   - Records of ended lives do not pile up. A holder deletes its life's
//     age and state records when the life is deleted; what nobody holds
//     then is deleted at a sweep (every 30 s) by the first live member by
//     id (collect.go): age and state records whose life id is not the
//     request's and that no live holder owns, and heartbeats of gone
//     members that no wanted life's record runs on. Each delete is guarded
//     by the key's revision and, for records, by the request not being of
//     that life id, so a wanted life keeps its records. Records that do not
//     parse and the quarantine keys stay for the user.
package supervisor
