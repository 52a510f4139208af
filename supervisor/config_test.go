package supervisor

import (
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/lease"
)

// New fills every zero setting from DefaultConfig, and the lease TTL
// default is lease.DefaultTTL, the one the daemon and the watchdog use.
func TestNewTakesDefaultConfig(t *testing.T) {
	d := DefaultConfig()
	if d.Lease.TTL != lease.DefaultTTL {
		t.Fatalf("default TTL %s, want lease.DefaultTTL (%s)", d.Lease.TTL, lease.DefaultTTL)
	}
	s, err := New(Config{ID: "m1", Client: &clientv3.Client{}, Keys: testKeys})
	if err != nil {
		t.Fatal(err)
	}
	got := s.cfg
	if got.Lease.TTL != d.Lease.TTL || got.Lease.Margin != d.Lease.Margin || got.CheckpointInterval != d.CheckpointInterval ||
		got.Candidates != d.Candidates || got.InFlight != d.InFlight || got.ShutdownTimeout != d.ShutdownTimeout {
		t.Fatalf("New filled %+v, want the defaults %+v", got, d)
	}
	// A TTL given changes the margin's default with it.
	s, err = New(Config{ID: "m1", Client: &clientv3.Client{}, Keys: testKeys, Lease: lease.Config{TTL: 10 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.Lease.Margin != lease.DefaultMargin(10*time.Second) {
		t.Fatalf("margin %s for a 10s TTL, want %s", s.cfg.Lease.Margin, lease.DefaultMargin(10*time.Second))
	}
}
