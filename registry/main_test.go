package registry_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: Watch
// must return, and every etcd server and client must be closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
