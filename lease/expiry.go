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
// The proof rests on four rules of etcd 3.x:
//   - TimeToLive's TTL is the leader's remaining time of the lease in
//     whole seconds, rounded toward zero (v3_server.go LeaseTimeToLive:
//     int64(Remaining().Seconds()); rpc.proto: "the lease will expire in
//     under TTL+1 seconds"), and -1 once the lease is gone.
//   - A renewal sets the remaining time back to the granted TTL
//     (lessor.Renew, refresh(0)), so for granted TTL G a renewal applied
//     less than G-1 s before an answer shows in it as a TTL of at least 1.
//   - A renewal that reaches the leader after the expiry fails
//     (lessor.Renew checks expired() and waits for the revoke). One
//     admitted just before may still complete after it (with lease
//     checkpoints on, Renew makes a raft round after that check); it is of
//     no use to its holder, whose safe deadline (see Session) is earlier
//     than any expiry etcd can apply, and whose lost session never revives.
//   - The leader answers TimeToLive from its own lessor, without checking
//     that it still leads (v3_server.go leaseTimeToLive: isLeader only). A
//     leader that the others have replaced without its knowing would answer
//     for a lease the new leader renews. So every answer of a proof must
//     carry the same raft term (the answering member's, in the response
//     header), and the caller must confirm, after the proof, that the
//     leader of that term still leads: a linearizable read, which the
//     leader answers only once a quorum has confirmed it, in that term. (A
//     new leader also extends every lease it takes over, lessor.Promote:
//     its answers show a TTL of at least 1.)
//
// So: answers of TTL 0 in one raft term, the first received at r1, each
// generated less than G-1 s after the one before it, and the last sent at
// least 1 s after r1, prove that the lease had no time left on the leader
// of that term when the last one was generated; with that leader confirmed
// afterwards, no other leader could have renewed it in between.

// expirySlack covers the rate difference between the local clock and the
// etcd leader's over the proof's one second: 1%, twenty times what NTP
// lets a clock's rate be slewed by (500 ppm); the session's margin assumes
// far more (TTL/5).
const expirySlack = 10 * time.Millisecond

// ttlAnswer is one TimeToLive answer of a lease, with the local times its
// request was sent and its answer received.
type ttlAnswer struct {
	sent, received time.Time
	ttl            int64  // seconds, rounded toward zero; -1: the lease is gone
	granted        int64  // the lease's granted TTL, seconds
	term           uint64 // the raft term of the answering member
}

// expiryProof follows one lease's TimeToLive answers, in the order they
// were received, and says when they prove that the lease has expired.
type expiryProof struct {
	open     bool      // a chain of TTL-0 answers is going on
	first    time.Time // when the chain's first answer was received
	lastSent time.Time // when the chain's last request was sent
	term     uint64    // the raft term of every answer of the chain
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
	if !p.open || a.received.Sub(p.lastSent) >= maxGap || a.term != p.term {
		// A new chain: this answer's lease had under 1 s left when the
		// leader answered, which was before it was received.
		p.open, p.first, p.term = true, a.received, a.term
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
// it has expired on the leader of raft term term (expired true) or etcd
// reports it gone (expired false: TTL -1, which etcd also answers for a
// lease more than 1 s past its expiry and not yet revoked), both with a
// nil error; otherwise it returns ctx's error. A failed or slow request
// only starts the proof again. Before acting on a proof, the caller must
// confirm that the leader of term still leads: a linearizable read whose
// response header carries term (see the rules above). Then it may revoke
// the lease knowing that etcd would have too. Each request is bounded by
// timeout.
func WaitExpired(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID, poll, timeout time.Duration) (expired bool, term uint64, err error) {
	var p expiryProof
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false, 0, ctx.Err()
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
			return false, 0, nil
		case err != nil:
			if ctx.Err() != nil {
				return false, 0, ctx.Err()
			}
			p.reset()
		default:
			var term uint64
			if resp.ResponseHeader != nil {
				term = resp.ResponseHeader.RaftTerm
			}
			done, at := p.observe(ttlAnswer{sent: sent, received: received, ttl: resp.TTL, granted: resp.GrantedTTL, term: term})
			if done {
				return true, term, nil
			}
			if !at.IsZero() {
				next = min(next, max(time.Until(at), 0))
			}
		}
		t.Reset(next)
	}
}
