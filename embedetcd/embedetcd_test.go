package embedetcd_test

import (
	"net"
	"strings"
	"testing"

	"github.com/immortald/immortald/embedetcd"
)

// TestListensOnLoopbackOnly starts the server and checks that every
// listener is on a loopback address, and that a non-loopback address is
// refused before anything listens.
func TestListensOnLoopbackOnly(t *testing.T) {
	s, err := embedetcd.Start(embedetcd.Config{Dir: t.TempDir(), ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addrs := s.Addrs()
	if len(addrs) < 2 {
		t.Fatalf("Addrs() = %v, want a client and a peer listener", addrs)
	}
	for _, a := range addrs {
		tcp, ok := a.(*net.TCPAddr)
		if !ok || !tcp.IP.IsLoopback() {
			t.Errorf("listener on %v, want loopback only", a)
		}
	}

	tests := []struct{ name, client, peer string }{
		{name: "client on every interface", client: "http://0.0.0.0:0", peer: "http://127.0.0.1:0"},
		{name: "peer on every interface", client: "http://127.0.0.1:0", peer: "http://[::]:0"},
		{name: "client on a host name", client: "http://example.invalid:0", peer: "http://127.0.0.1:0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := embedetcd.Start(embedetcd.Config{Dir: t.TempDir(), ClientURL: tt.client, PeerURL: tt.peer})
			if err == nil {
				s.Close()
				t.Fatal("Start = nil, want an error: the address is not loopback")
			}
			if !strings.Contains(err.Error(), "loopback") {
				t.Errorf("Start = %v, want it to say loopback", err)
			}
		})
	}
}
