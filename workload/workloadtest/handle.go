// Package workloadtest has an in-memory workload.Handle for unit tests of
// runners. It is not etcd and proves nothing about fencing: it records what
// a runner asked for, and fails checkpoints when told to.
package workloadtest

import (
	"context"
	"log/slog"
	"sync"

	"github.com/immortald/immortald/workload"
)

// Handle is an in-memory workload.Handle. Set the exported fields before
// Run; read what the runner did with Checkpoints and Statuses.
type Handle struct {
	LifeName string
	Inc      int64
	Token    int64
	Restored []byte
	Log      *slog.Logger

	mu          sync.Mutex
	checkpoints [][]byte
	statuses    []workload.ChildStatus
	fail        error
	block       bool
	expired     chan struct{}
	expireOnce  sync.Once
	changed     chan struct{}
}

// New returns a handle of life name with incarnation 1, token 7 and the
// restored state (nil: none), logging to log (nil: discard).
func New(name string, restored []byte, log *slog.Logger) *Handle {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Handle{LifeName: name, Inc: 1, Token: 7, Restored: restored,
		Log:     log.With("life", name, "incarnation", 1),
		expired: make(chan struct{}), changed: make(chan struct{})}
}

func (h *Handle) Name() string             { return h.LifeName }
func (h *Handle) Incarnation() int64       { return h.Inc }
func (h *Handle) FencingToken() int64      { return h.Token }
func (h *Handle) State() []byte            { return h.Restored }
func (h *Handle) Logger() *slog.Logger     { return h.Log }
func (h *Handle) Expired() <-chan struct{} { return h.expired }
func (h *Handle) Expire()                  { h.expireOnce.Do(func() { close(h.expired) }) }
func (h *Handle) notify()                  { close(h.changed); h.changed = make(chan struct{}) }
func (h *Handle) SetStatus(s workload.ChildStatus) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.statuses = append(h.statuses, s)
	h.notify()
}

// Checkpoint records state, or returns the error set by FailWith, or
// blocks (see Block). A state
// over workload.MaxStateBytes is refused as the real handle refuses it.
func (h *Handle) Checkpoint(ctx context.Context, state []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(state) > workload.MaxStateBytes {
		return workload.ErrStateTooLarge
	}
	h.mu.Lock()
	if h.block {
		h.mu.Unlock()
		<-ctx.Done()
		return ctx.Err()
	}
	defer h.mu.Unlock()
	if h.fail != nil {
		return h.fail
	}
	h.checkpoints = append(h.checkpoints, append([]byte(nil), state...))
	h.notify()
	return nil
}

// Block makes every later Checkpoint block until its context ends, as a
// write to an etcd that does not answer would.
func (h *Handle) Block(on bool) { h.mu.Lock(); h.block = on; h.mu.Unlock() }

// FailWith makes every later Checkpoint return err (nil: succeed again).
func (h *Handle) FailWith(err error) { h.mu.Lock(); h.fail = err; h.mu.Unlock() }

// Checkpoints returns a copy of the states checkpointed so far, in order.
func (h *Handle) Checkpoints() [][]byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([][]byte(nil), h.checkpoints...)
}

// Statuses returns the statuses set so far, in order.
func (h *Handle) Statuses() []workload.ChildStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]workload.ChildStatus(nil), h.statuses...)
}

// WaitFor blocks until cond (called under the handle's lock with the
// checkpoints and statuses so far) holds, or ctx ends; it reports which.
func (h *Handle) WaitFor(ctx context.Context, cond func(checkpoints [][]byte, statuses []workload.ChildStatus) bool) bool {
	for {
		h.mu.Lock()
		ok := cond(h.checkpoints, h.statuses)
		ch := h.changed
		h.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-ch:
		}
	}
}

var _ workload.Handle = (*Handle)(nil)
