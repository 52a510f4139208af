package lease_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/immortald/immortald/internal/etcdtest"
)

// TestMain fails the package when a test leaves a goroutine behind: every
// Session must be closed or abandoned, every client and server closed.
// (What a stopped etcd cluster's peer connections leave for a moment is not
// counted.)
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.PeerLeftovers...)
}
