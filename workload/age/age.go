// Package age is the built-in kind "age": a life whose only state is its
// age, which the supervisor counts. Its Runner runs nothing and returns
// when its context ends, so a life of this kind behaves exactly as lives
// did before kinds existed.
package age

import (
	"context"

	"github.com/immortald/immortald/workload"
)

// Kind is the built-in age kind.
func Kind() workload.Kind {
	return workload.Kind{Name: workload.AgeKind, New: func() workload.Runner { return runner{} }}
}

type runner struct{}

// Run waits for ctx and returns nil: there is nothing to stop or save.
func (runner) Run(ctx context.Context, _ workload.Handle) error {
	<-ctx.Done()
	return nil
}
