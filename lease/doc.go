// Package lease holds a member's one etcd session and knows, by its own
// clock, until when the session is certainly still alive.
//
// A Session wraps a concurrency.Session on a lease granted with TTL. Besides
// the keep-alive stream of concurrency.Session, it renews the lease itself
// with KeepAliveOnce and records, for every acknowledged renewal, the local
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
//   - Session.Done of concurrency alone fires up to about a second after a
//     peer can already have won; this package does not rely on it.
package lease
