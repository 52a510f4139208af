package supervisor

import (
	"context"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/registry"
)

func TestExpiryTargets(t *testing.T) {
	ms := func(ids ...string) []registry.Member {
		var out []registry.Member
		for i, id := range ids {
			out = append(out, registry.Member{ID: id, Lease: int64(i + 1)})
		}
		return out
	}
	ids := func(ms []registry.Member) []string {
		var out []string
		for _, m := range ms {
			out = append(out, m.ID)
		}
		return out
	}
	cases := []struct {
		self    string
		members []registry.Member
		want    []string
	}{
		{"a", nil, nil},
		{"a", ms("a"), nil},
		{"a", ms("a", "b"), []string{"b"}},
		{"b", ms("c", "a", "b"), []string{"c", "a"}},
		{"c", ms("a", "b", "c", "d", "e"), []string{"d", "e"}},
		{"e", ms("a", "b", "c", "d", "e"), []string{"a", "b"}},
		{"bb", ms("a", "b", "c"), []string{"c", "a"}}, // self not in the view yet
	}
	for _, c := range cases {
		if got := ids(expiryTargets(c.self, c.members)); !slices.Equal(got, c.want) {
			t.Errorf("expiryTargets(%q, %v) = %v, want %v", c.self, ids(c.members), got, c.want)
		}
	}
	// Each member is watched by expiryWatchers others.
	all := ms("a", "b", "c", "d", "e")
	watched := map[string]int{}
	for _, m := range all {
		for _, w := range expiryTargets(m.ID, all) {
			watched[w.ID]++
		}
	}
	for _, m := range all {
		if watched[m.ID] != expiryWatchers {
			t.Errorf("%s is watched by %d members, want %d", m.ID, watched[m.ID], expiryWatchers)
		}
	}
}

// TestExpiredPeerLeaseRevoked: a member whose lease is never renewed (a
// crashed peer, here a bare lease with a member record on it) has its
// lease revoked by the member watching it once it has expired, and never
// before. etcd revokes it itself up to 500 ms after its expiry, so a trial
// can go to etcd; of five, one must go to the member.
func TestExpiredPeerLeaseRevoked(t *testing.T) {
	srv := etcdtest.MustStart(t)
	a := startMember(t, srv.Endpoint(), "a")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for try := 1; ; try++ {
		sent := time.Now()
		grant, err := a.cli.Grant(ctx, 2)
		if err != nil {
			t.Fatal(err)
		}
		rec := registry.MemberRecord{ID: "b", Started: time.Now(), Kinds: []string{"age"}}
		if _, err := a.cli.Put(ctx, testKeys.Member("b"), string(rec.Marshal()), clientv3.WithLease(grant.ID)); err != nil {
			t.Fatal(err)
		}
		var gone time.Time
		waitFor(t, 10*time.Second, "the peer's lease gone", func() bool {
			resp, err := a.cli.TimeToLive(ctx, grant.ID)
			if err == nil && resp.TTL == -1 {
				gone = time.Now()
				return true
			}
			return false
		})
		if gone.Before(sent.Add(2 * time.Second)) {
			t.Fatalf("the peer's lease was gone %s after its grant was sent, under its TTL of 2 s", gone.Sub(sent))
		}
		if n := readCounter(a.sup.m.ExpiredRevokes); n > 0 {
			t.Logf("trial %d: revoked by the member, gone %s after the grant was sent", try, gone.Sub(sent).Round(time.Millisecond))
			return
		}
		t.Logf("trial %d: etcd revoked it first", try)
		if try == 5 {
			t.Fatal("etcd revoked the lease first in 5 trials: the member never did")
		}
	}
}
