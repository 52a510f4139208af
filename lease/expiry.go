package lease

import (
	"context"
	"errors"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// An etcd leader finds expired leases only every 500 ms (lessor.runLoop in
// server/lease/lessor.go), so a lease is revoked up to half a second after
// its expiry, and a crashed member's lives wait that long on top of the TTL.
// WaitExpired lets a peer see the expiry itself, from the lease's
// TimeToLive answers, and revoke the lease then (package supervisor does):
// etcd would revoke it anyway, and nothing can renew it any more.
//
// The proof rests on three rules of etcd 3.x:
//   - TimeToLive's TTL is the leader's remaining time of the lease in
//     whole seconds, rounded toward zero (v3_server.go LeaseTimeToLive:
//     int64(Remaining().Seconds()); rpc.proto: "the lease will expire in
//     under TTL+1 seconds"), and -1 once the lease is gone.
//   - A renewal sets the remaining time back to the granted TTL
//     (lessor.Renew, refresh(0)), so for granted TTL G a renewal applied
//     less than G-1 s before an answer shows in it as a TTL of at least 1.
//   - An expired lease cannot be renewed: lessor.Renew of a lease past its
//     expiry waits for its revoke and fails. (A new leader extends every
//     lease it takes over, lessor.Promote; that shows as a TTL of at least
//     1 and starts the proof again.)
//
// So: answers of TTL 0, the first received at r1, each generated less than
// G-1 s after the one before it, and the last sent at least 1 s after r1,
// prove that the lease had no time left when the last one was generated.
// The holder's own safe deadline (see Session) passed before that: it is
// earlier than any moment etcd can expire the lease.

// expirySlack covers the rate difference between the local clock and the
// etcd leader's over the proof's one second: 1%, twenty times what NTP
// lets a clock's rate be slewed by (500 ppm); the session's margin assumes
// far more (TTL/5).
const expirySlack = 10 * time.Millisecond

// ttlAnswer is one TimeToLive answer of a lease, with the local times its
// request was sent and its answer received.
type ttlAnswer struct {
	sent, received time.Time
	ttl            int64 // seconds, rounded toward zero; -1: the lease is gone
	granted        int64 // the lease's granted TTL, seconds
}

// expiryProof follows one lease's TimeToLive answers, in the order they
// were received, and says when they prove that the lease has expired.
type expiryProof struct {
	open     bool      // a chain of TTL-0 answers is going on
	first    time.Time // when the chain's first answer was received
	lastSent time.Time // when the chain's last request was sent
}

// reset forgets the chain: an answer was missed, so a renewal may hide.
func (p *expiryProof) reset() { p.open = false }

// observe takes the next answer and reports whether the answers so far
// prove that the lease has expired on the leader. When it has not, proveAt
// is the earliest local time a request sent then can complete the proof
// (zero when no chain is going on).
func (p *expiryProof) observe(a ttlAnswer) (expired bool, proveAt time.Time) {
	if a.ttl != 0 || a.granted < 2 {
		// Time left, or a lease so short that a renewal could show as 0.
		p.open = false
		return false, time.Time{}
	}
	maxGap := time.Duration(a.granted-1) * time.Second * 9 / 10
	if !p.open || a.received.Sub(p.lastSent) >= maxGap {
		// A new chain: this answer's lease had under 1 s left when the
		// leader answered, which was before it was received.
		p.open, p.first = true, a.received
	}
	p.lastSent = a.sent
	proveAt = p.first.Add(time.Second + expirySlack)
	if !a.sent.Before(proveAt) {
		p.open = false
		return true, time.Time{}
	}
	return false, proveAt
}

// WaitExpired asks etcd for the remaining time of lease id every poll (and
// at the moment the answers can complete the proof) until they prove that
// it has expired on the leader (expired true) or etcd reports it gone
// (expired false), both with a nil error; otherwise it returns ctx's error.
// A failed or slow request only starts the proof again. The caller may
// then revoke the lease (expired) knowing that etcd would have too; see
// the rules above. Each request is bounded by timeout.
func WaitExpired(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID, poll, timeout time.Duration) (expired bool, err error) {
	var p expiryProof
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-t.C:
		}
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, timeout)
		resp, err := cli.TimeToLive(rctx, id)
		cancel()
		received := time.Now()
		next := poll
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound) || (err == nil && resp.TTL < 0):
			return false, nil
		case err != nil:
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			p.reset()
		default:
			done, at := p.observe(ttlAnswer{sent: sent, received: received, ttl: resp.TTL, granted: resp.GrantedTTL})
			if done {
				return true, nil
			}
			if !at.IsZero() {
				next = min(next, max(time.Until(at), 0))
			}
		}
		t.Reset(next)
	}
}
