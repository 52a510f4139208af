// Package membertest runs real members (package daemon) inside a test's own
// process, on the test's etcd: for the tests of what reads a cluster (ls -w,
// the live page) that need members to start, hold lives and hand them off,
// without the watchdog or a process of their own.
//
// A member started here runs until the test ends, when it is stopped
// gracefully (its lives handed off), unless the test stopped it before.
package membertest

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/immortald/immortald/daemon"
)

// Bound is how long a member may take to become ready or to stop: a few
// lease TTLs on a loaded machine.
const Bound = 30 * time.Second

// Member is one member running in this process.
type Member struct {
	ID   string
	Main *daemon.Main

	cancel context.CancelFunc
	errc   chan error
	once   sync.Once
}

// Start starts member id on etcd endpoint ep with cfg, its ID, Endpoints,
// LeaseTTL (2 s), CheckpointInterval (200 ms) and Logger (silent) set
// here, and waits until it is ready (at most Bound). It fails t when the
// member cannot start; at cleanup it is stopped (Stop).
func Start(t *testing.T, ep, id string, cfg daemon.Config) *Member {
	t.Helper()
	cfg.ID, cfg.Endpoints = id, []string{ep}
	cfg.LeaseTTL, cfg.CheckpointInterval = 2*time.Second, 200*time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := daemon.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Open(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	mem := &Member{ID: id, Main: m, cancel: cancel, errc: make(chan error, 1)}
	go func() { mem.errc <- m.Run(ctx) }()
	t.Cleanup(func() { mem.Stop(t) })
	for deadline := time.Now().Add(Bound); !m.Ready(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("member %s not ready within %s", id, Bound)
		}
	}
	return mem
}

// Stop stops the member gracefully, as SIGTERM does: it hands its lives
// off. It fails t (without stopping the test) when the member's Run ends
// with an error or does not end within Bound. Only the first call acts.
func (m *Member) Stop(t *testing.T) {
	m.once.Do(func() {
		m.cancel()
		select {
		case err := <-m.errc:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("member %s: %v", m.ID, err)
			}
		case <-time.After(Bound):
			t.Errorf("member %s did not stop within %s", m.ID, Bound)
		}
	})
}
