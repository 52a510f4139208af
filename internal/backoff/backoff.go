// Package backoff holds the capped, doubling delay used between retries
// against etcd. It never sleeps past the end of its context.
package backoff

import (
	"context"
	"time"
)

// Backoff is a capped, doubling delay. The zero value is not usable: use New.
type Backoff struct {
	min, max, cur time.Duration
}

// New returns a backoff that starts at min and doubles up to max.
func New(min, max time.Duration) *Backoff { return &Backoff{min: min, max: max, cur: min} }

// Reset starts over from the minimum delay.
func (b *Backoff) Reset() { b.cur = b.min }

// Wait sleeps for the current delay, doubles it, and reports false when ctx
// ended first.
func (b *Backoff) Wait(ctx context.Context) bool {
	t := time.NewTimer(b.cur)
	defer t.Stop()
	b.cur = min(2*b.cur, b.max)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
