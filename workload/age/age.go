// Package age is the built-in kind "age": a life whose only state is its
// age, which the supervisor counts. The kind's New is nil, so a life of
// this kind runs nothing (no goroutine, no state record) and behaves
// exactly as lives did before kinds existed.
//
// Runner is kept for Go programs that want a Runner that runs nothing
// (a kind of their own whose work is its age, composed with others).
package age

import (
	"context"

	"github.com/immortald/immortald/workload"
)

// Kind is the built-in age kind: New is nil (see workload.Kind.New).
func Kind() workload.Kind {
	return workload.Kind{Name: workload.AgeKind}
}

// Runner runs nothing: its Run waits for its context.
type Runner struct{}

// Run waits for ctx and returns nil: there is nothing to stop or save.
func (Runner) Run(ctx context.Context, _ workload.Handle) error {
	<-ctx.Done()
	return nil
}
