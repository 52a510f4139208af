package supervisor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/lease"
	"github.com/immortald/immortald/registry"
)

// expiryWatchers is how many members watch each member's lease for its
// expiry (lease.WaitExpired): the ones before it in id order, around the
// ring. Each member watches as many. With fewer members, each watches all
// the others. If every watcher of a lease is gone too, etcd revokes it
// itself, up to 500 ms later.
const expiryWatchers = 2

// expiryTargets returns the members whose leases self watches: the
// expiryWatchers members after self in id order, around the ring, never
// self (by id: a record of self on an old lease is revokeStale's).
func expiryTargets(self string, ms []registry.Member) []registry.Member {
	others := make([]registry.Member, 0, len(ms))
	for _, m := range ms {
		if m.ID != self && m.Lease != 0 {
			others = append(others, m)
		}
	}
	slices.SortFunc(others, func(a, b registry.Member) int { return strings.Compare(a.ID, b.ID) })
	// The first member after self, then on around the ring.
	at, _ := slices.BinarySearchFunc(others, self, func(m registry.Member, id string) int { return strings.Compare(m.ID, id) })
	var out []registry.Member
	for i := range min(expiryWatchers, len(others)) {
		out = append(out, others[(at+i)%len(others)])
	}
	return out
}

// watchExpiries watches, until ctx ends, the leases of expiryTargets of
// each member view that comes on views, and revokes each lease that
// lease.WaitExpired proves expired (and the proof's leader is confirmed):
// its member's lives move to their next candidates at once instead of at
// etcd's next look for expired leases (every 500 ms). This is safe because
// etcd would revoke that lease anyway, and its holder's safe deadline is
// already past (see lease.WaitExpired). Each lease is polled every
// TTL/80 (25 ms at TTL 2 s, 62.5 ms at the default 5 s); a lease is
// revoked a poll, 10 ms of slack and three round trips (the last answer,
// the confirming read, the revoke) after its expiry, or, if an answer is
// missed, up to a second later, or by etcd itself. A member sends
// expiryWatchers TimeToLive requests per poll (80 a second at TTL 2 s),
// which its etcd endpoint answers from the leader's memory, without a
// raft round (a follower asks the leader over its peer connection).
func (s *Supervisor) watchExpiries(ctx context.Context, views <-chan []registry.Member) {
	poll := s.cfg.Lease.TTL / 80
	timeout := max(s.cfg.Lease.TTL/4, 500*time.Millisecond)
	var wg sync.WaitGroup
	defer wg.Wait()
	watching := make(map[int64]context.CancelFunc)
	defer func() {
		for _, stop := range watching {
			stop()
		}
	}()
	for {
		var ms []registry.Member
		select {
		case <-ctx.Done():
			return
		case ms = <-views:
		}
		want := make(map[int64]string)
		for _, m := range expiryTargets(s.cfg.ID, ms) {
			want[m.Lease] = m.ID
		}
		for id, stop := range watching {
			if _, ok := want[id]; !ok {
				stop()
				delete(watching, id)
			}
		}
		for id, member := range want {
			if watching[id] != nil {
				continue
			}
			wctx, stop := context.WithCancel(ctx)
			watching[id] = stop
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.revokeOnExpiry(wctx, ctx, member, clientv3.LeaseID(id), poll, timeout)
			}()
		}
	}
}

// revokeOnExpiry waits, until wait ends, for the lease of member to be
// proven expired, confirms that the etcd leader that proved it still leads
// (a linearizable read of the member's record, in the proof's raft term,
// which also finds the record still on that lease), and revokes the lease
// under ctx: not under wait, which ends when the revoke's own deletion of
// the member record reaches the member view, before the revoke's answer.
// A proof that cannot be confirmed is dropped and a new one begins. It
// returns when the lease is gone or revoked, or a context ends.
func (s *Supervisor) revokeOnExpiry(wait, ctx context.Context, member string, id clientv3.LeaseID, poll, timeout time.Duration) {
	log := s.log.With("member", member, "lease", fmt.Sprintf("%x", int64(id)))
	for {
		expired, term, err := lease.WaitExpired(wait, s.cfg.Client, id, poll, timeout)
		if err != nil || !expired {
			return
		}
		rctx, cancel := context.WithTimeout(ctx, s.cfg.Lease.TTL)
		resp, err := s.cfg.Client.Get(rctx, s.cfg.Keys.Member(member))
		switch {
		case err != nil:
			cancel()
			if wait.Err() != nil {
				return
			}
			log.Debug("cannot confirm the expiry of a member's lease; proving it again", "err", err)
			continue
		case resp.Header.RaftTerm != term:
			cancel()
			log.Debug("etcd's leader changed during the proof of a lease's expiry; proving it again", "proof_term", term, "term", resp.Header.RaftTerm)
			continue
		case len(resp.Kvs) == 0 || resp.Kvs[0].Lease != int64(id):
			cancel()
			return // its record went or moved: the lease is not the member's now
		}
		_, err = s.cfg.Client.Revoke(rctx, id)
		cancel()
		switch {
		case err == nil:
			s.m.ExpiredRevokes.Inc()
			log.Info("revoked the lease of a member: it had expired")
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			// etcd revoked it first.
		case ctx.Err() == nil:
			log.Debug("cannot revoke the expired lease of a member; etcd will", "err", err)
		}
		return
	}
}
