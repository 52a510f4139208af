// Package watchdog hands a crashed member's lives to its peers in
// milliseconds instead of after the lease TTL.
//
// `immortald run` is a small parent, the watchdog; the member runs as its
// child (the same binary, told by EnvFD). Over an inherited pipe the member
// tells the watchdog each session lease it is granted, before it writes any
// key on it (every session: a member opens a new one after a loss), and
// "closing" when it begins a graceful stop. When the member dies and did
// not exit cleanly (status 0), the watchdog
//
//  1. has the member's exit status from wait(2): the process is gone;
//  2. kills and reaps whatever it started: its process group, and any orphan
//     of it (the watchdog is a child subreaper), and waits until none is
//     left;
//  3. reads the pipe to its end and revokes every lease the member reported,
//     newest first: every candidacy of the member goes in one revision and
//     its peers start its lives at once through the direct-start path;
//  4. restarts the member after a doubling backoff, or, with
//     --restart-member=false, exits non-zero.
//
// SIGTERM and SIGINT are passed to the member, whose graceful handoff is
// unchanged; the watchdog then exits with it. If the watchdog itself dies,
// the kernel SIGKILLs the member (a parent-death signal) and the peers take
// over when the lease expires, as for a host that vanished. Go delivers the
// parent-death signal when the OS thread that forked the child ends, not the
// process, and Go may retire idle threads: the watchdog forks and waits on
// one locked thread that lives as long as the member does.
//
// With the embedded etcd (no endpoints), the etcd ran inside the member and
// died with it: the watchdog has nothing to reach, and no peer could have
// used that etcd meanwhile. A restarted etcd keeps every lease for another
// TTL, so the watchdog hands the dead member's leases to the member it
// starts next (EnvLeftover), which revokes them before it opens its own
// session, instead of waiting out the TTL to register its id again. The
// same hand-over covers a lease the watchdog could not revoke because etcd
// did not answer.
//
// Guarantees:
//   - Only death is proof. The watchdog revokes a lease only after wait(2)
//     returned the member's exit status and no process of its group or
//     orphan of it is left. A member that is alive, however late (stopped
//     by SIGSTOP, paused, swapping, cut off from etcd), is never revoked:
//     its lease expires at the TTL, after its own safe deadline stopped its
//     lives (package lease). If something the member started will not die
//     within the lease TTL, nothing is revoked.
//   - Work never outlives its member's lease. A member whose command lives
//     run processes tells the watchdog the safe deadline by which that work
//     will have stopped (Link.Deadline, on CLOCK_MONOTONIC), and that none
//     runs once it has stopped it. A member still alive 3/4 of Margin past
//     that deadline without having said either (stopped by SIGSTOP, hung)
//     cannot stop its work itself, and a command's processes run on while
//     their member is stopped: the watchdog SIGKILLs it, before its lease
//     can expire on the server (that is at least Margin after the
//     deadline), and then it is a dead member like any other: its processes
//     are killed and its lease is revoked. A member without command lives
//     running (ages, Go lives: stopped with their member, their writes
//     fenced) is never killed so.
//   - Revoking a dead member's lease cannot make two writers. The one-runner
//     rule (package lease) needs the lease to outlive the holder's belief
//     that it holds it; a dead process believes nothing and runs no life, so
//     a lease ended early by a revoke is to it what a lease ended by expiry
//     is: the end. What remains are requests it sent before it died and that
//     etcd has not applied yet: they may still be in its socket buffers or
//     the network when the watchdog's revoke, on another connection, is
//     applied. etcd applies every request in one order of revisions, so
//     each such request is applied either before the revoke, when the dead
//     member was still the holder and its guards were as valid as they were
//     when it sent them, or after it. After the revoke:
//     (a) every age record write, handoff and candidacy clean-up is guarded
//     by CreateRevision of the member's own election key, a key on the
//     revoked lease: the revoke deleted it, and a new key of that name would
//     have a newer CreateRevision (a key of that lease cannot be created
//     again at all), so the guard fails;
//     (b) a heartbeat and a member record update are guarded by
//     LeaseValue(members/<id>) == the lease, deleted by the revoke too (a
//     restarted member with the same id registers on a new lease);
//     (c) a put that attaches a key to the lease (a candidacy, the member
//     record) fails as a whole: the lease is not found;
//     (d) what is left is the member's garbage collection: deletes guarded by
//     the ModRevision the member read (a stale heartbeat, the age record of
//     a life that was deleted, its own last age record of a life deleted
//     under it). Each deletes only the exact version it read, as any live
//     member may do at any time; if anyone wrote the key since, it fails.
//     This is the same argument that covers a crashed member's late requests
//     after its lease expired by TTL today; the revoke only moves that moment
//     earlier, to after a death that is certain.
//   - A graceful stop is never revoked over: a member that exits 0 after
//     "closing" revoked its own lease after its final heartbeat. The watchdog
//     revokes nothing while a member runs, so it cannot cut a handoff short;
//     a member that dies during its handoff is revoked like any dead one.
//   - A member that keeps failing is restarted after 250 ms, then 500 ms, up
//     to 30 s between starts, never in a hot loop; the backoff starts over
//     once a member has run 5 s (one that dies later than that is restarted
//     after 250 ms each time: not a hot loop either).
//
// Not covered: a descendant that both left the member's process group and
// was not orphaned to the watchdog (a grandchild whose parent still runs is
// killed with its group; lives do not start processes yet), and a lease the
// member was granted but died before it could report (it holds no key and
// expires on its own).
package watchdog
