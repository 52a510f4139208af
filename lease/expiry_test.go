package lease_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/lease"
)

// TestWaitExpiredIsSafeAndEarly renews leases of TTL 2 s by hand every
// 1.5 s (so their remaining time dips to half a second, TTL 0, between
// renewals), then stops. WaitExpired must prove none of them expired
// before etcd can have expired it: never earlier than TTL after the send
// of its last acknowledged renewal. With five leases a tenth of a second
// apart, etcd's own look for expired leases (every 500 ms) falls at
// different points after their expiries, and at least one must be proved
// before etcd revokes it.
func TestWaitExpiredIsSafeAndEarly(t *testing.T) {
	const ttl = 2 * time.Second
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	type result struct {
		lastSent, lastRecv time.Time // of the last acknowledged renewal
		expired            bool
		at                 time.Time // when WaitExpired returned
		err                error
	}
	results := make([]result, 5)
	var wg sync.WaitGroup
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[i]
			time.Sleep(time.Duration(i) * 100 * time.Millisecond)
			grant, err := cli.Grant(ctx, int64(ttl/time.Second))
			if err != nil {
				r.err = err
				return
			}
			r.lastSent, r.lastRecv = time.Now(), time.Now()
			waited := make(chan struct{})
			go func() {
				defer close(waited)
				r.expired, _, r.err = lease.WaitExpired(ctx, cli, grant.ID, 50*time.Millisecond, time.Second)
				r.at = time.Now()
			}()
			for range 4 {
				time.Sleep(1500 * time.Millisecond)
				sent := time.Now()
				if _, err := cli.KeepAliveOnce(ctx, grant.ID); err != nil {
					break // expired after all (a loaded machine): what came before still counts
				}
				r.lastSent, r.lastRecv = sent, time.Now()
			}
			<-waited
			if r.expired {
				// An expired lease cannot be renewed.
				if _, err := cli.KeepAliveOnce(ctx, grant.ID); err == nil {
					r.err = errors.New("the lease was renewed after WaitExpired proved it expired")
				}
			}
		}()
	}
	wg.Wait()
	proved := 0
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("lease %d: %v", i, r.err)
		}
		if !r.expired {
			t.Logf("lease %d: etcd revoked it first (%s after its last renewal's answer)", i, r.at.Sub(r.lastRecv).Round(time.Millisecond))
			continue
		}
		proved++
		if early := r.lastSent.Add(ttl); r.at.Before(early) {
			t.Errorf("lease %d proved expired %s after its last renewal was sent, under its TTL %s", i, r.at.Sub(r.lastSent), ttl)
		}
		t.Logf("lease %d: proved expired %s after its last renewal's answer", i, r.at.Sub(r.lastRecv).Round(time.Millisecond))
	}
	if proved == 0 {
		t.Error("etcd revoked every lease before WaitExpired proved it expired")
	}
}

// TestWaitExpiredNotWhileRenewed: a Session's lease is never proved
// expired while the session renews it.
func TestWaitExpiredNotWhileRenewed(t *testing.T) {
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	s := mustOpen(t, cli, lease.Config{TTL: 2 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	expired, _, err := lease.WaitExpired(ctx, cli, s.Lease(), 20*time.Millisecond, time.Second)
	if expired || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitExpired of a renewed lease = %v, %v; want false and the context's deadline", expired, err)
	}
	if isClosed(s.Done()) {
		t.Fatal("the session was lost during the test: nothing was tested")
	}
}

// TestWaitExpiredGone: a revoked lease is reported gone, not expired.
func TestWaitExpiredGone(t *testing.T) {
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	grant, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Revoke(ctx, grant.ID); err != nil {
		t.Fatal(err)
	}
	expired, _, err := lease.WaitExpired(ctx, cli, grant.ID, 50*time.Millisecond, time.Second)
	if expired || err != nil {
		t.Fatalf("WaitExpired of a revoked lease = %v, %v; want false, nil", expired, err)
	}
}
