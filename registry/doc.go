// Package registry holds immortald's view of etcd: the keyspace, the rules for
// life names and options, the JSON records stored under the prefix, the
// list-and-watch of wanted lives, and the read-side status used by the CLI.
//
// Keyspace, under a prefix P (default "/immortals/"):
//
//	P lives/<name>                  requested by a user; empty or a JSON options object
//	P elections/<name>/<lease-hex>  candidates (concurrency.Election's layout); value = member id
//	P ages/<name>                   AgeRecord, written only by the fenced holder
//	P heartbeats/<lease-hex>        Heartbeat of the member on that lease; no lease, so it outlives it
//	P quarantine/<name>             bytes of an ages/<name> value that did not parse
//	P members/<id>                  MemberRecord, on the member's session lease
//
// Guarantees:
//   - A name or options value that fails validation is reported as invalid
//     (Life.Err) and never reaches the supervisor as a life to run.
//   - Watch delivers every change to lives/: after a compaction, a cancelled or
//     broken watch, it lists again and delivers the whole set (Handler.Sync), so a
//     consumer that reconciles against Sync never misses a request and never keeps
//     a deleted life.
//   - A life's identity (Life.ID) is the CreateRevision of its request key: a
//     delete followed by a new put is a different life.
package registry
