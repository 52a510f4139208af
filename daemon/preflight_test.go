package daemon_test

import (
	"context"
	"testing"
	"time"

	"github.com/immortald/immortald/daemon"
)

// TestRunWaitsForUnreachableEtcd starts a member whose etcd does not
// answer: it is not ready, does not exit, and returns nil once stopped.
func TestRunWaitsForUnreachableEtcd(t *testing.T) {
	log := newLog(t)
	m, err := daemon.New(daemon.Config{ID: "m1", Endpoints: []string{"127.0.0.1:1"}, HTTPAddr: "127.0.0.1:0", LeaseTTL: 2 * time.Second, CheckpointInterval: 200 * time.Millisecond, Logger: log.logger})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Open(); err != nil {
		t.Fatalf("Open = %v, want nil: without a user the client does not wait for etcd", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- m.Run(ctx) }()
	select {
	case err := <-errc:
		t.Fatalf("Run = %v before it was stopped, want it to wait for etcd", err)
	case <-time.After(time.Second):
	}
	if m.Ready() {
		t.Error("Ready() = true without etcd")
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("Run = %v after a stop, want nil", err)
		}
	case <-time.After(bound):
		t.Fatalf("Run did not return within %s of the stop", bound)
	}
}
