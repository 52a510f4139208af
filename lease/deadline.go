package lease

import (
	"sync"
	"time"
)

// SafeDeadline is the last moment the lease is certainly alive on the server,
// by the local clock, after a renewal sent at sent was acknowledged with ttl.
func SafeDeadline(sent time.Time, ttl, margin time.Duration) time.Time {
	return sent.Add(ttl - margin)
}

// deadline tracks the safe deadline and fires expired once it passes.
type deadline struct {
	clock  Clock
	margin time.Duration

	mu      sync.Mutex
	at      time.Time
	stop    func() bool
	fired   bool
	expired chan struct{}
}

func newDeadline(clock Clock, margin time.Duration, sent time.Time, ttl time.Duration) *deadline {
	d := &deadline{clock: clock, margin: margin, expired: make(chan struct{})}
	d.mu.Lock()
	d.at = SafeDeadline(sent, ttl, margin)
	d.armLocked()
	d.mu.Unlock()
	return d
}

// renewed records a renewal sent at sent and acknowledged with ttl. It never
// moves the deadline backwards (acknowledgements can arrive out of order),
// and it cannot revive an expired deadline.
func (d *deadline) renewed(sent time.Time, ttl time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fired {
		return
	}
	if at := SafeDeadline(sent, ttl, d.margin); at.After(d.at) {
		d.at = at
	}
}

// expire ends the deadline now.
func (d *deadline) expire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fireLocked()
}

// get returns the current deadline.
func (d *deadline) get() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.at
}

// close stops the timer without firing.
func (d *deadline) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stop != nil {
		d.stop()
	}
}

func (d *deadline) armLocked() {
	d.stop = d.clock.AfterFunc(d.at.Sub(d.clock.Now()), d.check)
}

// check runs when the timer fires: if renewals moved the deadline, it waits
// for the new one; otherwise the deadline has passed.
func (d *deadline) check() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fired {
		return
	}
	if d.clock.Now().Before(d.at) {
		d.armLocked()
		return
	}
	d.fireLocked()
}

func (d *deadline) fireLocked() {
	if d.fired {
		return
	}
	d.fired = true
	if d.stop != nil {
		d.stop()
	}
	close(d.expired)
}
