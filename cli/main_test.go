package cli_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a command leaves a goroutine behind: every
// client a command opens must be closed before Execute returns.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
