package daemon_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a member leaves a goroutine behind after
// Run returned: Run promises to close everything it opened. The scanner of
// package execkind, shared by the process's command lives, is not the
// member's: it ends on its next tick (a second) after the last hold ended.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/immortald/immortald/workload/execkind.(*tracker).scanLoop"))
}
