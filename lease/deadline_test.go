package lease

import (
	"testing"
	"time"
)

func TestSafeDeadline(t *testing.T) {
	sent := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		ttl    time.Duration
		margin time.Duration
		want   time.Duration // after sent
	}{
		{name: "default 5s", ttl: 5 * time.Second, margin: time.Second, want: 4 * time.Second},
		{name: "floor 2s", ttl: 2 * time.Second, margin: 400 * time.Millisecond, want: 1600 * time.Millisecond},
		{name: "long", ttl: 60 * time.Second, margin: 12 * time.Second, want: 48 * time.Second},
		{name: "server shortened the TTL", ttl: time.Second, margin: time.Second, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SafeDeadline(sent, tt.ttl, tt.margin); !got.Equal(sent.Add(tt.want)) {
				t.Fatalf("SafeDeadline(sent, %s, %s) = sent+%s, want sent+%s", tt.ttl, tt.margin, got.Sub(sent), tt.want)
			}
		})
	}
}

func TestDefaultMargin(t *testing.T) {
	tests := []struct {
		name string
		ttl  time.Duration
		want time.Duration
	}{
		{name: "5s", ttl: 5 * time.Second, want: time.Second},
		{name: "2s", ttl: 2 * time.Second, want: 400 * time.Millisecond},
		{name: "floor", ttl: time.Second, want: 250 * time.Millisecond},
		{name: "60s", ttl: time.Minute, want: 12 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := DefaultMargin(tt.ttl); got != tt.want {
				t.Fatalf("DefaultMargin(%s) = %s, want %s", tt.ttl, got, tt.want)
			}
		})
	}
}

const (
	ttl    = 5 * time.Second
	margin = time.Second
)

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestDeadlineFiresAtTheDeadlineNotBefore(t *testing.T) {
	c := newFakeClock()
	sent := c.Now()
	d := newDeadline(c, margin, sent, ttl)
	defer d.close()
	want := sent.Add(ttl - margin)
	if !d.get().Equal(want) {
		t.Fatalf("deadline = sent+%s, want sent+%s", d.get().Sub(sent), ttl-margin)
	}
	c.Advance(ttl - margin - time.Nanosecond)
	if isClosed(d.expired) {
		t.Fatalf("expired 1ns before the deadline")
	}
	c.Advance(time.Nanosecond)
	if !isClosed(d.expired) {
		t.Fatalf("not expired at the deadline")
	}
}

func TestDeadlineRenewed(t *testing.T) {
	tests := []struct {
		name string
		// steps run in order: advance the clock, then record a renewal sent
		// at sent (relative to the start) with ttl, unless ttl is 0.
		steps []struct{ advance, sent, ttl time.Duration }
		// wantAt is the deadline after the steps, relative to the start.
		wantAt time.Duration
	}{
		{
			name:   "forward",
			steps:  []struct{ advance, sent, ttl time.Duration }{{advance: time.Second, sent: time.Second, ttl: ttl}},
			wantAt: 5 * time.Second,
		},
		{
			name: "ack sent before the ack it follows",
			steps: []struct{ advance, sent, ttl time.Duration }{
				{advance: 2 * time.Second, sent: 2 * time.Second, ttl: ttl},
				{advance: 100 * time.Millisecond, sent: time.Second, ttl: ttl},
			},
			wantAt: 6 * time.Second,
		},
		{
			name: "shorter TTL from the server does not move it back",
			steps: []struct{ advance, sent, ttl time.Duration }{
				{advance: time.Second, sent: time.Second, ttl: 2 * time.Second},
			},
			wantAt: 4 * time.Second,
		},
		{
			name: "several renewals",
			steps: []struct{ advance, sent, ttl time.Duration }{
				{advance: 1250 * time.Millisecond, sent: 1250 * time.Millisecond, ttl: ttl},
				{advance: 1250 * time.Millisecond, sent: 2500 * time.Millisecond, ttl: ttl},
				{advance: 1250 * time.Millisecond, sent: 3750 * time.Millisecond, ttl: ttl},
			},
			wantAt: 7750 * time.Millisecond,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newFakeClock()
			start := c.Now()
			d := newDeadline(c, margin, start, ttl)
			defer d.close()
			for _, s := range tt.steps {
				c.Advance(s.advance)
				d.renewed(start.Add(s.sent), s.ttl)
			}
			if got := d.get().Sub(start); got != tt.wantAt {
				t.Fatalf("deadline = start+%s, want start+%s", got, tt.wantAt)
			}
			// The expiry follows the moved deadline: not before it, at it.
			now := c.Now().Sub(start)
			c.Advance(tt.wantAt - now - time.Nanosecond)
			if isClosed(d.expired) {
				t.Fatalf("expired 1ns before the renewed deadline (start+%s)", tt.wantAt)
			}
			c.Advance(time.Nanosecond)
			if !isClosed(d.expired) {
				t.Fatalf("not expired at the renewed deadline (start+%s)", tt.wantAt)
			}
		})
	}
}

func TestDeadlineCannotBeRevived(t *testing.T) {
	tests := []struct {
		name string
		end  func(c *fakeClock, d *deadline)
	}{
		{name: "passed", end: func(c *fakeClock, _ *deadline) { c.Advance(ttl) }},
		{name: "expired by hand", end: func(_ *fakeClock, d *deadline) { d.expire() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newFakeClock()
			start := c.Now()
			d := newDeadline(c, margin, start, ttl)
			defer d.close()
			tt.end(c, d)
			if !isClosed(d.expired) {
				t.Fatal("not expired")
			}
			before := d.get()
			d.renewed(c.Now(), ttl) // a late acknowledgement
			if !d.get().Equal(before) {
				t.Fatalf("a renewal after expiry moved the deadline from start+%s to start+%s", before.Sub(start), d.get().Sub(start))
			}
			d.expire() // twice is harmless
			c.Advance(time.Hour)
			if n := c.pending(); n != 0 {
				t.Fatalf("%d timers still armed after expiry", n)
			}
		})
	}
}

func TestDeadlineExpireNow(t *testing.T) {
	c := newFakeClock()
	d := newDeadline(c, margin, c.Now(), ttl)
	defer d.close()
	d.expire()
	if !isClosed(d.expired) {
		t.Fatal("expire did not close expired at once")
	}
	if n := c.pending(); n != 0 {
		t.Fatalf("expire left %d timers armed", n)
	}
}

func TestDeadlineCloseDoesNotFire(t *testing.T) {
	c := newFakeClock()
	d := newDeadline(c, margin, c.Now(), ttl)
	d.close()
	c.Advance(time.Hour)
	if isClosed(d.expired) {
		t.Fatal("a closed deadline fired")
	}
	if n := c.pending(); n != 0 {
		t.Fatalf("close left %d timers armed", n)
	}
}

// TestDeadlineAlreadyPassed covers a grant acknowledged so late that its
// safe deadline is behind the clock: it must fire at the first chance.
func TestDeadlineAlreadyPassed(t *testing.T) {
	c := newFakeClock()
	sent := c.Now()
	c.Advance(ttl) // the grant took a whole TTL to come back
	d := newDeadline(c, margin, sent, ttl)
	defer d.close()
	c.Advance(0)
	if !isClosed(d.expired) {
		t.Fatal("a deadline already in the past did not fire")
	}
}
