// Package registry holds immortald's view of etcd: the keyspace, the rules for
// life names and options, the JSON records stored under the prefix, the
// list-and-watch of wanted lives, and the read-side status used by the CLI
// (GetStatus, ListStatus, and StatusWatch for ls -w and get-age -w).
//
// Keyspace, under a prefix P (default "/immortals/"):
//
//	P lives/<name>                  requested by a user; empty or a JSON options object ({"labels", "kind"})
//	P elections/<name>/<lease-hex>  candidates (concurrency.Election's layout); value = member id
//	P ages/<name>                   AgeRecord, written only by the fenced holder
//	P states/<name>                 StateRecord: the workload's last checkpoint, written only by the
//	                                fenced holder (lives of kinds other than age)
//	P children/<name>               ChildRecord: the workload's status, small; written and deleted
//	                                with states/<name>, in the same Txn (what a status read reads)
//	P heartbeats/<lease-hex>        Heartbeat of the member on that lease; no lease, so it outlives it
//	P quarantine/<name>             bytes of an ages/<name> value that did not parse
//	P quarantine-states/<name>      bytes of a states/<name> value that did not parse
//	P members/<id>                  MemberRecord, on the member's session lease; lists the kinds it runs
//
// Guarantees:
//   - A name or options value that fails validation is reported as invalid
//     (Life.Err) and never reaches the supervisor as a life to run.
//   - Watch delivers every change to lives/: after a compaction, a cancelled or
//     broken watch, it lists again and delivers the whole set (Handler.Sync), so a
//     consumer that reconciles against Sync never misses a request and never keeps
//     a deleted life.
//   - StatusWatch reports every change of a life's status but its age, once
//     per revision; after a broken watch it reads again and reports the
//     differences, so it never misses a change of what ListStatus would show
//     (it may merge changes made while its watch was broken).
//   - A request can name a kind (see package workload) but never a command:
//     a request carrying a command, its arguments or its environment is
//     invalid. Members declare the commands of their kinds in their config.
//   - A life's identity (Life.ID) is the CreateRevision of its request key: a
//     delete followed by a new put is a different life.
package registry
