// Package embedetcd runs a single-member etcd inside the immortald process:
// the one-command default of `immortald run`, and the real etcd of the
// integration tests.
//
// Guarantees: Start returns only once the server serves clients, or with an
// error; Close stops it and releases its ports and data directory lock. It
// listens on loopback only (127.0.0.0/8, ::1 or localhost), in plain http:
// Start refuses any other client or peer address, so the embedded etcd,
// which has neither TLS nor auth, is never reachable from another machine.
package embedetcd

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Config configures the embedded server.
type Config struct {
	// Dir holds the data. Default "immortald.etcd".
	Dir string
	// ClientURL is where clients connect. Default http://127.0.0.1:2379;
	// port 0 picks a free port (see Server.Endpoint). Its host must be
	// loopback.
	ClientURL string
	// PeerURL is the raft peer URL. Default http://127.0.0.1:2380; port 0
	// picks a free port. Its host must be loopback.
	PeerURL string
	// LogLevel of etcd's own log (zap): debug, info, warn, error, fatal.
	// Default fatal: etcd logs harmless errors on every clean stop, and real
	// trouble reaches immortald as failed requests, which it logs itself.
	LogLevel string
	// StartTimeout bounds the wait for the server to serve. Default 60s.
	StartTimeout time.Duration
}

// Server is a running embedded etcd.
type Server struct {
	e *embed.Etcd
}

// Start starts the server and waits until it serves.
func Start(cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		cfg.Dir = "immortald.etcd"
	}
	if cfg.ClientURL == "" {
		cfg.ClientURL = "http://127.0.0.1:2379"
	}
	if cfg.PeerURL == "" {
		cfg.PeerURL = "http://127.0.0.1:2380"
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "fatal"
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	cu, err := url.Parse(cfg.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd client URL %q: %w", cfg.ClientURL, err)
	}
	pu, err := url.Parse(cfg.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd peer URL %q: %w", cfg.PeerURL, err)
	}
	for _, u := range []*url.URL{cu, pu} {
		if !isLoopback(u.Hostname()) {
			return nil, fmt.Errorf("embedded etcd URL %q: the host must be loopback (127.0.0.1, ::1 or localhost): the embedded etcd has no TLS and no auth", u.String())
		}
	}
	ec := embed.NewConfig()
	ec.Name = "immortald"
	ec.Dir = cfg.Dir
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.LogLevel = cfg.LogLevel
	ec.LogOutputs = []string{"stderr"}
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = "5m"
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s: %w", cfg.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return &Server{e: e}, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(cfg.StartTimeout):
		e.Server.Stop()
		e.Close()
		return nil, errors.New("embedded etcd did not become ready in time")
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Addrs returns the address of every listener the server has: clients and
// peers.
func (s *Server) Addrs() []net.Addr {
	var out []net.Addr
	for _, l := range s.e.Clients {
		out = append(out, l.Addr())
	}
	for _, p := range s.e.Peers {
		out = append(out, p.Addr())
	}
	return out
}

// Endpoint returns the address clients reach the server at.
func (s *Server) Endpoint() string { return s.e.Clients[0].Addr().String() }

// Err reports a fatal server error.
func (s *Server) Err() <-chan error { return s.e.Err() }

// Close stops the server.
func (s *Server) Close() { s.e.Close() }
