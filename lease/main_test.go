package lease_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: every
// Session must be closed or abandoned, every client and server closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
