package etcdtest

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
)

// Cluster is several embedded etcd members forming one cluster.
type Cluster struct {
	members []*embed.Etcd
	stopped []bool
	mu      sync.Mutex
}

// MustStartCluster starts n etcd members as one cluster on loopback ports,
// with their data under tb.TempDir(), and waits until it serves.
func MustStartCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	peers := make([]string, n)
	var initial []string
	for i := range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("free port: %v", err)
		}
		peers[i] = "http://" + l.Addr().String()
		_ = l.Close()
		initial = append(initial, fmt.Sprintf("m%d=%s", i, peers[i]))
	}
	c := &Cluster{members: make([]*embed.Etcd, n), stopped: make([]bool, n)}
	tb.Cleanup(func() {
		for i := range c.members {
			c.Stop(i)
		}
	})
	dir := tb.TempDir()
	for i := range n {
		cu, _ := url.Parse("http://127.0.0.1:0")
		pu, _ := url.Parse(peers[i])
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = fmt.Sprintf("%s/m%d", dir, i)
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.InitialClusterToken = dir
		cfg.LogLevel = "fatal"
		cfg.LogOutputs = []string{"stderr"}
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			tb.Fatalf("start etcd member %d: %v", i, err)
		}
		c.members[i] = e
	}
	for i, e := range c.members {
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			tb.Fatalf("etcd member %d: %v", i, err)
		case <-time.After(60 * time.Second):
			tb.Fatalf("etcd member %d did not serve within 60s", i)
		}
	}
	return c
}

// Endpoint returns the client address of member i.
func (c *Cluster) Endpoint(i int) string { return c.members[i].Clients[0].Addr().String() }

// Stop stops member i; the others go on without it.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.members[i] != nil && !c.stopped[i] {
		c.stopped[i] = true
		c.members[i].Close()
	}
}

// HasLeader reports whether member i knows a leader.
func (c *Cluster) HasLeader(i int) bool { return c.members[i].Server.Leader() != 0 }

// MustLeaderless starts a three-member cluster and stops two of its members:
// the third answers clients but has no leader. It returns that member's
// client endpoint.
func MustLeaderless(tb testing.TB) string {
	tb.Helper()
	c := MustStartCluster(tb, 3)
	c.Stop(1)
	c.Stop(2)
	for end := time.Now().Add(30 * time.Second); c.HasLeader(0); {
		if time.Now().After(end) {
			tb.Fatal("etcd member 0 still has a leader 30s after the two others stopped")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c.Endpoint(0)
}

// PeerLeftovers are goleak options for the packages that run a Cluster: the
// HTTP connections between its members (etcd's peer traffic) close on their
// own a moment after the members stop.
var PeerLeftovers = []goleak.Option{
	goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
	goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
	goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
	goleak.IgnoreAnyFunction("net/http.(*connReader).backgroundRead"),
}
