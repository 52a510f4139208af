package etcdclient

import (
	"context"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestDialerKeepsTCPConns: the health monitor's dialer sets
// TCP_USER_TIMEOUT on what it dials (as gRPC does on its own connections),
// keeps each connection until it is closed, and closeAll closes those to
// the address.
func TestDialerKeepsTCPConns(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	d := newDialer(2 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c1, err := d.dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := d.dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS == "linux" {
		rc, err := c1.(*trackedConn).Conn.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var ms int
		var gerr error
		if err := rc.Control(func(fd uintptr) { ms, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT) }); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		if ms != 2000 {
			t.Errorf("TCP_USER_TIMEOUT = %d ms, want 2000", ms)
		}
	}
	p1, p2 := <-accepted, <-accepted
	defer p1.Close()
	defer p2.Close()
	if n := d.open(addr); n != 2 {
		t.Fatalf("%d connections kept, want 2", n)
	}
	_ = c2.Close()
	if n := d.open(addr); n != 1 {
		t.Fatalf("%d connections kept after one closed, want 1", n)
	}
	d.closeAll(addr)
	for _, p := range []net.Conn{p1, p2} {
		_ = p.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := p.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("the peer read %v after the close, want EOF", err)
		}
	}
	if n := d.open(addr); n != 0 {
		t.Errorf("%d connections kept after closeAll, want 0", n)
	}
}

// TestHostPort: endpoints as Validate takes them, to the address the
// client dials.
func TestHostPort(t *testing.T) {
	for _, tt := range []struct {
		ep, addr   string
		tlsOn, tls bool
		ok         bool
	}{
		{ep: "127.0.0.1:2379", addr: "127.0.0.1:2379", ok: true},
		{ep: "127.0.0.1:2379", tlsOn: true, addr: "127.0.0.1:2379", tls: true, ok: true},
		{ep: "http://etcd-0.etcd:2379", addr: "etcd-0.etcd:2379", ok: true},
		{ep: "https://etcd-0.etcd:2379/", addr: "etcd-0.etcd:2379", tls: true, ok: true},
		{ep: "https://h:2379/some/path", addr: "h:2379", tls: true, ok: true},
		{ep: "unix:///run/etcd.sock"},
		{ep: "unixs:/run/etcd.sock"},
		{ep: "unix:/run/etcd.sock"},
	} {
		addr, tls, ok := hostPort(tt.ep, tt.tlsOn)
		if addr != tt.addr || tls != tt.tls || ok != tt.ok {
			t.Errorf("hostPort(%q, %v) = %q, %v, %v; want %q, %v, %v", tt.ep, tt.tlsOn, addr, tls, ok, tt.addr, tt.tls, tt.ok)
		}
	}
}
