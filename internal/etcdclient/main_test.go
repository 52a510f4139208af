package etcdclient_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/immortald/immortald/internal/etcdtest"
)

// TestMain fails the package when a test leaves a goroutine behind: every
// client and etcd server must be closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.PeerLeftovers...)
}
