package lease

import (
	"testing"
	"time"
)

// answers feeds p one answer per entry: at is when its request was sent
// (ms from t0), rtt its round trip, ttl the TTL field; granted is 2 s.
// It returns the index of the answer that completed the proof, or -1.
func feed(p *expiryProof, t0 time.Time, answers [][3]int64) int {
	for i, a := range answers {
		sent := t0.Add(time.Duration(a[0]) * time.Millisecond)
		got, _ := p.observe(ttlAnswer{sent: sent, received: sent.Add(time.Duration(a[1]) * time.Millisecond), ttl: a[2], granted: 2})
		if got {
			return i
		}
	}
	return -1
}

func TestExpiryProof(t *testing.T) {
	t0 := time.Now()
	const sl = int64(expirySlack / time.Millisecond)
	cases := []struct {
		name    string
		answers [][3]int64 // sent ms, rtt ms, ttl
		want    int        // the answer that proves it, -1: none may
	}{
		{"a second of zeros proves it", [][3]int64{{0, 2, 1}, {50, 2, 0}, {500, 2, 0}, {1000, 2, 0}, {1051 + sl, 2, 0}, {1052 + sl, 2, 0}}, 5},
		{"the proof needs a request sent 1 s and the slack after the first zero was received", [][3]int64{{50, 2, 0}, {600, 2, 0}, {1051 + sl, 2, 0}, {1052 + sl, 2, 0}}, 3},
		{"time left is no proof", [][3]int64{{0, 2, 1}, {500, 2, 1}, {1000, 2, 1}, {1500, 2, 1}, {2500, 2, 1}}, -1},
		{"a renewal in the middle starts it again", [][3]int64{{0, 2, 0}, {400, 2, 1}, {450, 2, 0}, {1100, 2, 0}, {1451 + sl, 2, 0}, {1452 + sl, 2, 0}}, 5},
		{"a gap that could hide a renewal starts it again", [][3]int64{{0, 2, 0}, {950, 2, 0}, {1100, 2, 0}, {1951 + sl, 2, 0}, {1952 + sl, 2, 0}}, 4},
		{"a slow answer is a gap too", [][3]int64{{0, 2, 0}, {100, 900, 0}, {1100, 2, 0}}, -1},
		{"a chain of slow answers proves it only from its own first answer", [][3]int64{{0, 300, 0}, {300, 300, 0}, {600, 300, 0}, {900, 300, 0}, {1200, 300, 0}, {1299 + sl, 300, 0}, {1300 + sl, 300, 0}}, 6},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var p expiryProof
			if got := feed(&p, t0, c.answers); got != c.want {
				t.Errorf("proved at answer %d, want %d", got, c.want)
			}
		})
	}
}

func TestExpiryProofNeedsAGrantOfTwoSeconds(t *testing.T) {
	// With a 1 s lease a renewal could show as TTL 0 at once.
	var p expiryProof
	t0 := time.Now()
	for i := range 40 {
		sent := t0.Add(time.Duration(i) * 50 * time.Millisecond)
		if got, _ := p.observe(ttlAnswer{sent: sent, received: sent.Add(time.Millisecond), ttl: 0, granted: 1}); got {
			t.Fatalf("proved at answer %d for a lease granted 1 s", i)
		}
	}
}

func TestExpiryProofStartsAgainInANewTerm(t *testing.T) {
	// A leader replaced without its knowing answers in its old term; the
	// new leader's answers are another term's and prove nothing with them.
	var p expiryProof
	t0 := time.Now()
	for i, term := range []uint64{5, 5, 5, 6, 6} {
		sent := t0.Add(time.Duration(i) * 300 * time.Millisecond)
		if got, _ := p.observe(ttlAnswer{sent: sent, received: sent.Add(time.Millisecond), ttl: 0, granted: 2, term: term}); got {
			t.Fatalf("proved at answer %d (term %d) with answers of two terms", i, term)
		}
	}
	sent := t0.Add(1920*time.Millisecond + expirySlack)
	if got, _ := p.observe(ttlAnswer{sent: sent, received: sent.Add(time.Millisecond), ttl: 0, granted: 2, term: 6}); !got {
		t.Fatal("not proved by a second of term 6's answers")
	}
}

func TestExpiryProofReset(t *testing.T) {
	var p expiryProof
	t0 := time.Now()
	at := func(ms int64) ttlAnswer {
		s := t0.Add(time.Duration(ms) * time.Millisecond)
		return ttlAnswer{sent: s, received: s.Add(time.Millisecond), ttl: 0, granted: 2}
	}
	if got, proveAt := p.observe(at(0)); got || !proveAt.Equal(t0.Add(time.Millisecond+time.Second+expirySlack)) {
		t.Fatalf("first zero: got %v, proveAt %v", got, proveAt.Sub(t0))
	}
	p.reset() // a failed request between
	if got, _ := p.observe(at(1100)); got {
		t.Fatal("proved across a failed request")
	}
}
