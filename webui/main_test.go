package webui_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: Close
// ends every stream and waits for the watch.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
