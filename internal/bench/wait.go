package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// parallel runs f(0..n-1) with at most k at once and returns the first error.
func parallel(ctx context.Context, n, k int, f func(i int) error) error {
	sem := make(chan struct{}, k)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := f(i); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return ctx.Err()
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// waitNotified waits until check reports done, or returns its error. It
// checks again whenever the channel check returned is closed, and every
// tick (0: only then). It fails after timeout.
func waitNotified(ctx context.Context, timeout, tick time.Duration, check func() (done bool, changed <-chan struct{}, err error)) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var tickc <-chan time.Time
	if tick > 0 {
		t := time.NewTicker(tick)
		defer t.Stop()
		tickc = t.C
	}
	for {
		ok, ch, err := check()
		if ok {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("timed out after %s", timeout)
		case <-ch:
		case <-tickc:
		}
	}
}
