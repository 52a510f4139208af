// Package workload is the seam between the supervisor and what a life runs.
//
// Every life keeps its age (the time it has lived, counted by the
// supervisor); its kind decides what else runs while a member holds it. A
// Kind makes Runners; the supervisor calls Runner.Run once per hold (once
// more if a handoff it stopped for did not happen), in its own goroutine, with a Handle that gives the life's name, incarnation,
// fencing token and restored state, and a fenced Checkpoint.
//
// A Kind whose New is nil runs nothing but the life's age: no goroutine, no
// state record, no Run. The built-in kind "age" (package workload/age) is
// such a kind. A life whose request names no kind is of kind "age" and
// behaves exactly as lives did before kinds existed.
//
// # Stopping
//
// Run's context ends when the member must stop the life. context.Cause(ctx)
// says how:
//
//   - ErrStopped: a graceful stop (a handoff to a peer, the member shutting
//     down, the life deleted). Run may take up to the kind's StopGrace to
//     stop its work and may call Checkpoint once more (with a context that
//     is not ctx, e.g. context.WithoutCancel(ctx)): the member still holds
//     the life, and keeps holding it, until Run returns or Expired closes.
//   - ErrDeadline: the holder's lease reached its safe deadline, or its
//     session is lost. Another member may run the life soon: Run must stop
//     its work at once (kill, not ask) and must not checkpoint; any
//     Checkpoint now fails with ErrFenced.
//
// Handle.Expired closes at the safe deadline even when a graceful stop has
// already begun, so a runner in its stop grace learns that it must kill now.
//
// # Returning early
//
// Run may return before its context ends (its work finished, or failed for
// good). Restarting in place is the runner's own business (see package
// workload/execkind, which restarts a command under its restart policy and
// keeps Run going until its context ends); what the supervisor does with a
// Run that returned early is its decision, not the runner's.
package workload

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"
)

// Runner is what runs while this member holds a life.
type Runner interface {
	// Run runs the life's work until ctx ends (see the package doc for the
	// causes), then stops it and returns. It is called once per Runner (a
	// hold makes one, and one more after a handoff that did not happen),
	// from its own goroutine. It returns nil after a graceful stop whose
	// final state is checkpointed; an error otherwise (the cause for a kill
	// at the deadline, or what failed).
	Run(ctx context.Context, h Handle) error
}

// Handle is the life as the holder sees it, valid for one Run.
type Handle interface {
	// Name is the life's name.
	Name() string
	// Incarnation counts starts of the life, from 1.
	Incarnation() int64
	// FencingToken is the CreateRevision of the holder's election key:
	// strictly greater for every new holder of the life, so a workload can
	// fence its own writes elsewhere with it.
	FencingToken() int64
	// State is the last checkpoint of this life restored at the start of
	// the hold, nil if none. The caller must not modify it.
	State() []byte
	// Checkpoint stores state as the life's state, in a write fenced by this
	// holder's election key and the life id, and returns once etcd applied
	// it. Errors: ErrFenced when this member no longer holds the life (the
	// write was not applied and never will be), ErrStateTooLarge when
	// len(state) > MaxStateBytes (nothing written; the last good checkpoint
	// stays), or the error of etcd or ctx (the write may or may not have
	// been applied; retrying with the same or newer state is safe).
	// Concurrent calls are allowed; the supervisor may batch them with
	// other lives' writes.
	Checkpoint(ctx context.Context, state []byte) error
	// SetStatus publishes the workload's status (shown by `immortald ls`
	// and `get-age -o json`). It does not block; the latest status wins
	// and is written with the next checkpoint.
	SetStatus(ChildStatus)
	// Logger is the member's logger with the attributes "life" (name) and
	// "incarnation" set.
	Logger() *slog.Logger
	// Expired is closed when the holder's lease reaches its safe deadline
	// or its session is lost, even if a graceful stop has already begun:
	// from then on the runner must kill its work at once.
	Expired() <-chan struct{}
}

// Stop causes, read with context.Cause on Run's context.
var (
	// ErrStopped is a graceful stop: handoff, shutdown, life deleted.
	ErrStopped = errors.New("workload: life stopped")
	// ErrDeadline is the lease's safe deadline or a lost session: kill now,
	// do not checkpoint.
	ErrDeadline = errors.New("workload: holder's safe deadline passed")
)

// Checkpoint errors.
var (
	// ErrFenced: this member no longer holds the life; the write was not
	// applied.
	ErrFenced = errors.New("workload: checkpoint fenced: this member no longer holds the life")
	// ErrStateTooLarge: the state is over MaxStateBytes; nothing was written.
	ErrStateTooLarge = fmt.Errorf("workload: state over the limit of %d bytes", MaxStateBytes)
)

// MaxStateBytes is the largest state a life may checkpoint: 512 KiB, well
// under etcd's default request limit of 1.5 MiB, with room for the record's
// metadata and its base64 encoding (4/3 of the bytes). A state over it is
// not checkpointed: the last good checkpoint is kept, the error is logged
// and shown in the life's status, and the workload keeps running.
const MaxStateBytes = 512 << 10

// Child states, ChildStatus.State.
const (
	ChildRunning = "running" // the work runs
	ChildBackoff = "backoff" // it exited and waits to be restarted
	ChildExited  = "exited"  // it exited and will not be restarted in this hold
)

// ChildStatus is what a workload reports about itself.
type ChildStatus struct {
	// State is ChildRunning, ChildBackoff or ChildExited.
	State string `json:"state"`
	// ExitCode of the last exit; -1 when killed by a signal, 0 before any.
	ExitCode int `json:"exit_code"`
	// Restarts counts restarts in place during this hold.
	Restarts int `json:"restarts"`
	// Error is the latest problem (a failed start, a state over the limit),
	// "" when none.
	Error string `json:"error,omitempty"`
}

// AgeKind is the built-in kind: the life's age alone. A request without a
// kind is of this kind; no config may declare it.
const AgeKind = "age"

var kindName = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

// ValidateKindName reports why name cannot name a kind, or nil: 1 to 63
// bytes of lower-case ASCII letters, digits and '-', starting with a
// letter (a DNS label, so it can be used in labels and file names).
func ValidateKindName(name string) error {
	if !kindName.MatchString(name) {
		return fmt.Errorf("kind %q: want 1 to 63 lower-case letters, digits and '-', starting with a letter", name)
	}
	return nil
}

// Kind is a kind a member runs.
type Kind struct {
	// Name of the kind (see ValidateKindName).
	Name string
	// New makes the Runner of one Run (a hold has one, or one more after a
	// handoff that did not happen). nil: the kind runs nothing but the
	// life's age (no goroutine, no state), as the built-in kind "age".
	New func() Runner
	// StopGrace is how long the runner's own graceful stop may take (for
	// a command: SIGTERM, then SIGKILL after StopGrace). Run returns about
	// StopGrace plus one Checkpoint after a graceful stop at the latest; a
	// supervisor that waits longer than that may close Expired, after which
	// Run kills at once and returns. 0: the runner stops at once.
	StopGrace time.Duration
}

// Validate checks k's name and fields (New may be nil: see New).
func (k Kind) Validate() error {
	if err := ValidateKindName(k.Name); err != nil {
		return err
	}
	if k.StopGrace < 0 {
		return fmt.Errorf("kind %q: stop grace %s is negative", k.Name, k.StopGrace)
	}
	return nil
}
