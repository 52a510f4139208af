// Package supervisor runs the lives of one member.
//
// For every wanted life (delivered by registry.Watch) that rendezvous
// placement makes this member a candidate for, the supervisor campaigns on
// the member's one lease.Session and runs the life while it holds it. The
// elections use concurrency.Election's keys and rule (elections/<name>/
// <lease-hex>; the lowest create revision leads) but run in batches: one
// Txn carries the election step of up to 120 lives, each in a nested Txn,
// and one watch of deletions under elections/ wakes waiting candidates, so
// a life costs a small struct, not a goroutine, a Txn and a watch (see
// elect.go). A life's state is its age: it counts the time the life runs,
// in memory, and is checkpointed to ages/<name> every checkpoint interval,
// many lives per Txn.
//
// Guarantees:
//   - One writer. Every age write is a Txn guarded by
//     CreateRevision(own election key) == own revision and
//     CreateRevision(lives/<name>) == life id. A failed guard stops that life
//     at once; lives batched with it are unaffected (each has its own nested
//     Txn).
//   - One runner. When the session's safe deadline passes (see package
//     lease), every life is stopped before the server can expire the lease;
//     then a new session is opened and the member campaigns again.
//   - A candidate leads only when a Txn finds its own key first in the
//     election, in the same snapshot that reads the request and the age
//     record; a key on an expired lease cannot be created (etcd #11051).
//   - Placement never decides who runs a life, only who campaigns: a handoff
//     is one fenced Txn that also checks that the preferred member is next.
//   - Age never goes backwards: a life resumes from the age record of the
//     same life id; all writes of one member are serialised, and a record of
//     another life id, or one that does not parse, is never resumed. Bytes that
//     do not parse are copied to quarantine/<name> before being replaced.
//   - Shutdown stops every life, writes each final checkpoint (fenced) and
//     revokes the lease with a fresh context, so peers take over at once.
package supervisor
