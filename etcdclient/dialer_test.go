package etcdclient

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// TestDialerKeepsTCPConns: the health monitor's dialer hands gRPC the
// *net.TCPConn itself (gRPC sets TCP_USER_TIMEOUT only on one), and
// closeAll closes what it dialed to the address.
func TestDialerKeepsTCPConns(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	d := newDialer()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.dial(ctx, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.(*net.TCPConn); !ok {
		t.Fatalf("dial returned a %T, want *net.TCPConn", c)
	}
	peer := <-accepted
	defer peer.Close()
	d.closeAll(ln.Addr().String())
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := peer.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the peer read %v after closeAll, want EOF", err)
	}
}
