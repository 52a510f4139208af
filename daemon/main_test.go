package daemon_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a member leaves a goroutine behind after
// Run returned: Run promises to close everything it opened (execkind's
// scan of the lives' process trees ends with the last command life).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
