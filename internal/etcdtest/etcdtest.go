// Package etcdtest starts real etcd servers for tests: an embedded etcd on
// free loopback ports in the test's temporary directory, and a TCP proxy that
// can freeze a client's connection to it, to cut a member off without
// touching the server. Everything is stopped by tb.Cleanup.
package etcdtest

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/immortald/immortald/embedetcd"
)

// Server is an embedded etcd for one test.
type Server struct {
	*embedetcd.Server
	Dir string
}

// MustStart starts an embedded etcd on 127.0.0.1:0 in tb.TempDir().
func MustStart(tb testing.TB) *Server {
	tb.Helper()
	return MustStartIn(tb, tb.TempDir())
}

// MustStartIn starts an embedded etcd with its data in dir.
func MustStartIn(tb testing.TB, dir string) *Server {
	tb.Helper()
	s, err := embedetcd.Start(embedetcd.Config{Dir: dir, ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0"})
	if err != nil {
		tb.Fatalf("start embedded etcd: %v", err)
	}
	tb.Cleanup(s.Close)
	return &Server{Server: s, Dir: dir}
}

// MustClient returns a plain client of endpoints, closed at cleanup.
func MustClient(tb testing.TB, endpoints ...string) *clientv3.Client {
	tb.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    time.Second,
		DialKeepAliveTimeout: time.Second,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		tb.Fatalf("etcd client: %v", err)
	}
	tb.Cleanup(func() { _ = cli.Close() })
	return cli
}

// Proxy forwards TCP connections to a target; Freeze stops moving bytes
// without closing anything, like a network partition. Down counts the
// bytes it moved from the target to its clients.
type Proxy struct {
	ln     net.Listener
	target string
	down   atomic.Int64

	mu     sync.Mutex
	frozen bool
	thaw   chan struct{}
	conns  []net.Conn
	wg     sync.WaitGroup
}

// MustProxy starts a proxy to target on a free loopback port.
func MustProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("proxy listen: %v", err)
	}
	p := &Proxy{ln: ln, target: target, thaw: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	tb.Cleanup(p.close)
	return p
}

// Addr is the proxy's address, to give to a client as its endpoint.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Down returns how many bytes the proxy has moved from the target to its
// clients (etcd's answers, with gRPC's framing) since it started.
func (p *Proxy) Down() int64 { return p.down.Load() }

// Freeze stops forwarding in both directions.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.frozen {
		p.frozen = true
		p.thaw = make(chan struct{})
	}
}

// Thaw resumes forwarding.
func (p *Proxy) Thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen {
		p.frozen = false
		close(p.thaw)
	}
}

func (p *Proxy) gate() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.frozen {
		return nil
	}
	return p.thaw
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		var d net.Dialer
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		up, err := d.DialContext(ctx, "tcp", p.target)
		cancel()
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up, &p.down)
		go p.pipe(up, c, nil)
	}
}

// pipe copies src to dst, adding what it wrote to count (when not nil).
func (p *Proxy) pipe(dst, src net.Conn, count *atomic.Int64) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if g := p.gate(); g != nil {
				<-g
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			if count != nil {
				count.Add(int64(n))
			}
		}
		if err != nil {
			_ = dst.Close()
			return
		}
	}
}

func (p *Proxy) close() {
	_ = p.ln.Close()
	p.Thaw()
	p.mu.Lock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
