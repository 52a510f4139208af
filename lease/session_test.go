package lease_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/lease"
)

// slack is added to protocol bounds: generous, for a loaded 2-core machine.
const slack = 2 * time.Second

// logBuffer collects a Session's log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLogger(t *testing.T) (*slog.Logger, *logBuffer) {
	lb := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("session log:\n%s", lb)
		}
	})
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

// timeToLive returns the lease's remaining TTL in seconds on the server; -1
// means the lease does not exist.
func timeToLive(t *testing.T, cli *clientv3.Client, id clientv3.LeaseID) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.TimeToLive(ctx, id)
	if err != nil {
		t.Fatalf("TimeToLive(%x): %v", int64(id), err)
	}
	return resp.TTL
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func mustOpen(t *testing.T, cli *clientv3.Client, cfg lease.Config) *lease.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := lease.Open(ctx, cli, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(s.Abandon) // harmless after Close or Abandon
	return s
}

// TestSessionGivesUpBeforeTheServer cuts the member off from etcd and checks
// that Done fires while the lease still exists on the server: a peer cannot
// have won anything yet.
func TestSessionGivesUpBeforeTheServer(t *testing.T) {
	const ttl, margin = 5 * time.Second, 2 * time.Second
	srv := etcdtest.MustStart(t)
	direct := etcdtest.MustClient(t, srv.Endpoint())
	proxy := etcdtest.MustProxy(t, srv.Endpoint())
	cli := etcdtest.MustClient(t, proxy.Addr())
	log, logs := newLogger(t)
	s := mustOpen(t, cli, lease.Config{TTL: ttl, Margin: margin, Logger: log})

	// Renewals move the safe deadline (one every 3/8 TTL).
	first := s.Deadline()
	for end := time.Now().Add(ttl + slack); !s.Deadline().After(first); {
		if time.Now().After(end) {
			t.Fatalf("safe deadline did not move within %s: no renewal was acknowledged", ttl+slack)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if isClosed(s.Done()) {
		t.Fatal("Done fired while etcd was reachable")
	}

	proxy.Freeze()
	select {
	case <-s.Done():
	case <-time.After(ttl + slack):
		t.Fatalf("Done did not fire within %s of the member being cut off", ttl+slack)
	}
	remaining := timeToLive(t, direct, s.Lease())

	if remaining <= 0 {
		t.Errorf("when Done fired the server's lease had %ds left (-1: gone), want it still alive (> 0)", remaining)
	}
	if !strings.Contains(logs.String(), "safe deadline passed") {
		t.Errorf("Done did not come from the safe deadline; log:\n%s", logs)
	}
	t.Logf("lease had %ds left on the server when Done fired", remaining)

	s.Abandon()
	proxy.Thaw()
}

// TestSessionDoneWhenLeaseRevoked ends the lease behind the member's back.
func TestSessionDoneWhenLeaseRevoked(t *testing.T) {
	const ttl = 2 * time.Second
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	log, _ := newLogger(t)
	s := mustOpen(t, cli, lease.Config{TTL: ttl, Logger: log})

	if _, err := cli.Revoke(context.Background(), s.Lease()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-time.After(ttl + slack):
		t.Fatalf("Done did not fire within %s of the lease being revoked", ttl+slack)
	}
}

func TestSessionClose(t *testing.T) {
	tests := []struct {
		name string
		// closeCtx returns the context given to Close.
		closeCtx  func() (context.Context, context.CancelFunc)
		wantErr   bool
		wantGone  bool
		twiceOkay bool
	}{
		{
			name: "fresh context revokes",
			closeCtx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 10*time.Second)
			},
			wantGone:  true,
			twiceOkay: true,
		},
		{
			name: "cancelled context leaves the lease to expire",
			closeCtx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				return ctx, cancel
			},
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := etcdtest.MustStart(t)
			cli := etcdtest.MustClient(t, srv.Endpoint())
			log, _ := newLogger(t)

			// The caller's own context ends before Close: the session and
			// the lease outlive it.
			callerCtx, cancelCaller := context.WithCancel(context.Background())
			s, err := lease.Open(callerCtx, cli, lease.Config{TTL: 5 * time.Second, Logger: log})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.Abandon)
			if _, err := cli.Put(context.Background(), "/k", "v", clientv3.WithLease(s.Lease())); err != nil {
				t.Fatal(err)
			}
			cancelCaller()
			if got := timeToLive(t, cli, s.Lease()); got <= 0 {
				t.Fatalf("lease has %ds left after the caller's context ended, want it alive", got)
			}
			if isClosed(s.Done()) {
				t.Fatal("Done fired when the caller's context ended")
			}

			ctx, cancel := tt.closeCtx()
			defer cancel()
			err = s.Close(ctx)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Close = %v, want error: %v", err, tt.wantErr)
			}
			if !isClosed(s.Done()) {
				t.Fatal("Done is open after Close")
			}
			gone := timeToLive(t, cli, s.Lease()) == -1
			if gone != tt.wantGone {
				t.Fatalf("lease gone after Close: %v, want %v", gone, tt.wantGone)
			}
			resp, err := cli.Get(context.Background(), "/k")
			if err != nil {
				t.Fatal(err)
			}
			if got := len(resp.Kvs) == 0; got != tt.wantGone {
				t.Fatalf("key on the lease gone after Close: %v, want %v", got, tt.wantGone)
			}
			if tt.twiceOkay {
				ctx, cancel := tt.closeCtx()
				defer cancel()
				if err := s.Close(ctx); err != nil {
					t.Fatalf("second Close = %v, want nil", err)
				}
			}
		})
	}
}

func TestSessionAbandon(t *testing.T) {
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	log, _ := newLogger(t)
	s := mustOpen(t, cli, lease.Config{TTL: 5 * time.Second, Logger: log})
	if _, err := cli.Put(context.Background(), "/k", "v", clientv3.WithLease(s.Lease())); err != nil {
		t.Fatal(err)
	}

	s.Abandon()
	if !isClosed(s.Done()) {
		t.Fatal("Done is open after Abandon")
	}
	if got := timeToLive(t, cli, s.Lease()); got <= 0 {
		t.Fatalf("lease has %ds left right after Abandon, want it alive until it expires", got)
	}
	resp, err := cli.Get(context.Background(), "/k")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatal("the key on the lease went with Abandon")
	}
}

func TestOpenRefusesBadConfig(t *testing.T) {
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	tests := []struct {
		name string
		cfg  lease.Config
		want string
	}{
		{name: "TTL 1s", cfg: lease.Config{TTL: time.Second}, want: "1s"},
		{name: "TTL 2500ms", cfg: lease.Config{TTL: 2500 * time.Millisecond}, want: "whole seconds"},
		{name: "margin too large", cfg: lease.Config{TTL: 4 * time.Second, Margin: 3 * time.Second}, want: "margin (3s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := lease.Open(context.Background(), cli, tt.cfg)
			if err == nil {
				s.Abandon()
				t.Fatal("Open = nil error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open = %q, want it to contain %q", err, tt.want)
			}
			resp, err := cli.Leases(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Leases) != 0 {
				t.Fatalf("Open with a bad config granted %d leases", len(resp.Leases))
			}
		})
	}
}

// TestOpenWithoutALeaderGivesUp: the grant that opens a session requires an
// etcd leader and gives up once its answer would come too late to be of use
// (TTL minus the margin), instead of waiting on a member without a leader
// for as long as the caller's context lasts.
func TestOpenWithoutALeaderGivesUp(t *testing.T) {
	const ttl = 2 * time.Second
	cli := etcdtest.MustClient(t, etcdtest.MustLeaderless(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	s, err := lease.Open(ctx, cli, lease.Config{TTL: ttl})
	took := time.Since(start)
	if err == nil {
		s.Abandon()
		t.Fatal("Open granted a lease on a member without a leader")
	}
	if took > ttl+slack {
		t.Errorf("Open gave up after %v, want at most the TTL (%v, plus %v of slack)", took.Round(time.Millisecond), ttl, slack)
	}
	t.Logf("Open gave up after %v: %v", took.Round(time.Millisecond), err)
}

// TestRenewalsMoveOffAMemberWithoutALeader: a renewal that a member without
// a leader refuses is sent again to the next endpoint, so no renewal is lost
// to it. The member without a leader and the healthy etcd are of two
// clusters (one process cannot cut a member of its own cluster off from its
// peers; the e2e test TestEtcdMemberIsolated does): the client balances
// calls over both, so about every other renewal meets the refusal.
func TestRenewalsMoveOffAMemberWithoutALeader(t *testing.T) {
	const ttl = 2 * time.Second
	healthy := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, etcdtest.MustLeaderless(t), healthy.Endpoint())
	log, logs := newLogger(t)
	s := mustOpen(t, cli, lease.Config{TTL: ttl, Logger: log})
	time.Sleep(3 * ttl) // 12 renewals
	if isClosed(s.Done()) {
		t.Fatal("the session was lost")
	}
	if n := strings.Count(logs.String(), "lease renewal failed"); n > 0 {
		t.Errorf("%d renewals failed", n)
	}
	if got := timeToLive(t, etcdtest.MustClient(t, healthy.Endpoint()), s.Lease()); got <= 0 {
		t.Errorf("the lease has %ds left on the server, want it renewed", got)
	}
}

// TestRenewalsMoveOffAStalledStream: the renewals share one keep-alive
// stream; when it stops moving (its connection frozen, as to an etcd
// member that died without closing it), the next renewal goes on a new
// stream on the other endpoint, and the session lives on. Both endpoints
// are proxies of one etcd, so which one carries the renewals can be seen
// (the bytes each moves) and frozen.
func TestRenewalsMoveOffAStalledStream(t *testing.T) {
	const ttl = 2 * time.Second
	srv := etcdtest.MustStart(t)
	p := []*etcdtest.Proxy{etcdtest.MustProxy(t, srv.Endpoint()), etcdtest.MustProxy(t, srv.Endpoint())}
	cli := etcdtest.MustClient(t, p[0].Addr(), p[1].Addr())
	log, logs := newLogger(t)
	s := mustOpen(t, cli, lease.Config{TTL: ttl, Logger: log})
	// Which proxy carries the renewals: the one whose bytes grow while
	// nothing else is sent.
	time.Sleep(ttl / 2)
	d0, d1 := p[0].Down(), p[1].Down()
	time.Sleep(ttl)
	busy := 0
	if p[1].Down()-d1 > p[0].Down()-d0 {
		busy = 1
	}
	other := p[1-busy]
	if grew := p[busy].Down() - []int64{d0, d1}[busy]; grew == 0 {
		t.Fatalf("no bytes through either proxy in %s: no renewals seen", ttl)
	}
	before := other.Down()
	p[busy].Freeze()
	defer p[busy].Thaw()
	time.Sleep(3 * ttl) // 12 renewals, each past the frozen one's safe deadline if it were the only way
	if isClosed(s.Done()) {
		t.Fatalf("the session was lost while one of two endpoints stalled")
	}
	if other.Down() == before {
		t.Fatalf("nothing moved through the other endpoint while the renewals' stream stalled")
	}
	if got := timeToLive(t, etcdtest.MustClient(t, srv.Endpoint()), s.Lease()); got <= 0 {
		t.Errorf("the lease has %ds left on the server, want it renewed", got)
	}
	if n := strings.Count(logs.String(), "lease renewal failed"); n > 0 {
		t.Errorf("%d renewals failed", n)
	}
}
