// Package supervisor runs the lives of one member.
//
// For every wanted life (delivered by registry.Watch) the supervisor keeps one
// runner, which campaigns for the life through concurrency.Election on the
// member's one lease.Session, and runs the life while it holds it. A life's
// state is its age: it counts the time the life runs, in memory, and is
// checkpointed to ages/<name> every checkpoint interval, many lives per Txn.
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
//   - Campaign can return after its session expired (etcd #11051): a runner
//     runs a life only after it has read its own election key back with its
//     own revision.
//   - Age never goes backwards: a life resumes from the age record of the
//     same life id; all writes of one member are serialised, and a record of
//     another life id, or one that does not parse, is never resumed. Bytes that
//     do not parse are copied to quarantine/<name> before being replaced.
//   - Shutdown stops every life, writes each final checkpoint (fenced) and
//     revokes the lease with a fresh context, so peers take over at once.
package supervisor
