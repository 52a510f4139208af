package etcdclient_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/immortald/immortald/internal/etcdtest"
)

// TestMain fails the package if a test leaves a goroutine behind: a client
// not closed, a handshake left hanging.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.PeerLeftovers...)
}
