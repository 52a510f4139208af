// Package lease holds a member's one etcd session and knows, by its own
// clock, until when the session is certainly still alive.
//
// A Session holds a lease granted with TTL and renews it itself, every
// 3/8 of the TTL, on one long-lived LeaseKeepAlive stream (a new one only when it
// breaks or stalls: with a user and password, each new stream costs an
// Authenticate), and records, for every acknowledged renewal, the local
// time the request was sent. The server cannot expire the lease earlier than
// TTL after it received that request, which is after it was sent, so
//
//	safe deadline = send time of the last acknowledged renewal + TTL - margin
//
// is a moment before which no peer can have won anything this session held.
//
// Guarantees:
//   - Done is closed no later than the safe deadline (give or take timer
//     latency), and also when etcd reports the lease gone or the session
//     ends. It is closed exactly once and never reopens: a lost session is
//     replaced by a new one, never revived.
//   - The guarantee holds while the local clock's rate differs from the etcd
//     leader's by less than margin/TTL. Wall-clock jumps do not matter: Go's
//     time.Now carries a monotonic reading.
//   - No keep-alive of clientv3 (Lease.KeepAlive, concurrency.Session) is
//     used: their Done fires up to about a second after a peer can already
//     have won.
package lease
