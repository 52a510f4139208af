package lease

import "time"

// Clock is the time source of the deadline logic, a field so tests can
// drive time by hand.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine after d; the returned function
	// stops the timer.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// RealClock is the system clock.
type RealClock struct{}

// Now returns time.Now().
func (RealClock) Now() time.Time { return time.Now() }

// AfterFunc wraps time.AfterFunc.
func (RealClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}
