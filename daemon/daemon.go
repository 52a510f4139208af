// Package daemon wires one immortald member together: etcd (embedded or
// remote), the HTTP endpoints, and the supervisor. cmd/immortald and the
// integration tests start whole members through Main.
//
// Guarantees: Run returns only after the supervisor has shut down (final
// heartbeat written, lease revoked, each step bounded) and every resource
// it opened is closed.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/immortald/immortald/embedetcd"
	"github.com/immortald/immortald/lease"
	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/supervisor"
)

// Version is set at build time with -ldflags "-X .../daemon.Version=...".
var Version = "dev"

// Config is everything `immortald run` is told.
type Config struct {
	// ID is the member id. Default: the hostname.
	ID string
	// Endpoints of etcd. Empty: start an embedded etcd.
	Endpoints []string
	// Prefix of the keyspace. Default "/immortals/".
	Prefix string
	// LeaseTTL of the member's session. Default 5s, at least 2s.
	LeaseTTL time.Duration
	// CheckpointInterval between heartbeats (checkpoints of every life's
	// age). Default 1s, below LeaseTTL.
	CheckpointInterval time.Duration
	// HTTPAddr serves /livez, /readyz and /metrics. Default ":8080"; empty
	// string disables it.
	HTTPAddr string
	// AdvertiseAddr is the address published in the member record, where a
	// peer or a user reaches this member's HTTP endpoints (in Kubernetes,
	// the pod IP and the port). Default: HTTPAddr as bound when its host is
	// given (127.0.0.1:8081), else the hostname and the bound port
	// (pod-7f9c:8080); "" when HTTPAddr is empty.
	AdvertiseAddr string
	// DataDir of the embedded etcd. Default "immortald.etcd".
	DataDir string
	// EmbeddedClientURL and EmbeddedPeerURL of the embedded etcd. Defaults
	// http://127.0.0.1:2379 and :2380.
	EmbeddedClientURL, EmbeddedPeerURL string
	// Logger. Default slog.Default().
	Logger *slog.Logger
}

// Main is one member.
type Main struct {
	cfg     Config
	log     *slog.Logger
	etcd    *embedetcd.Server
	cli     *clientv3.Client
	sup     *supervisor.Supervisor
	httpLn  net.Listener
	httpSrv *http.Server
}

// New checks cfg and returns a member that is not started yet.
func New(cfg Config) (*Main, error) {
	if cfg.ID == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("no --id given and no hostname: %w", err)
		}
		cfg.ID = h
	}
	if cfg.Prefix == "" {
		cfg.Prefix = registry.DefaultPrefix
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 5 * time.Second
	}
	if cfg.CheckpointInterval == 0 {
		cfg.CheckpointInterval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if _, err := registry.NewKeys(cfg.Prefix); err != nil {
		return nil, fmt.Errorf("--prefix: %w", err)
	}
	if err := registry.ValidateName(cfg.ID); err != nil {
		return nil, fmt.Errorf("--id %q: %w", cfg.ID, err)
	}
	if cfg.AdvertiseAddr != "" {
		if host, port, err := net.SplitHostPort(cfg.AdvertiseAddr); err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("--advertise-addr %q: want host:port", cfg.AdvertiseAddr)
		}
	}
	lc := lease.Config{TTL: cfg.LeaseTTL, Margin: lease.DefaultMargin(cfg.LeaseTTL)}
	if err := lc.Validate(); err != nil {
		return nil, fmt.Errorf("--lease-ttl: %w", err)
	}
	if cfg.CheckpointInterval <= 0 || cfg.CheckpointInterval >= cfg.LeaseTTL {
		return nil, fmt.Errorf("--checkpoint-interval (%s) must be above 0 and below --lease-ttl (%s)", cfg.CheckpointInterval, cfg.LeaseTTL)
	}
	return &Main{cfg: cfg, log: cfg.Logger}, nil
}

// Ready reports whether the member serves (for /readyz and tests).
func (m *Main) Ready() bool { return m.sup != nil && m.sup.Ready() }

// HTTPAddr returns the address the HTTP endpoints listen on, once Open ran.
func (m *Main) HTTPAddr() string {
	if m.httpLn == nil {
		return ""
	}
	return m.httpLn.Addr().String()
}

// EtcdEndpoint returns the client address of the embedded etcd, once Open
// ran; "" when the member uses an external etcd.
func (m *Main) EtcdEndpoint() string {
	if m.etcd == nil {
		return ""
	}
	return m.etcd.Endpoint()
}

// Supervisor returns the member's supervisor, once Open ran.
func (m *Main) Supervisor() *supervisor.Supervisor { return m.sup }

// Open starts etcd (if embedded), connects, and binds the HTTP address.
func (m *Main) Open() error {
	endpoints := m.cfg.Endpoints
	if len(endpoints) == 0 {
		m.log.Info("no etcd endpoints given: starting an embedded etcd", "data_dir", m.dataDir())
		srv, err := embedetcd.Start(embedetcd.Config{Dir: m.dataDir(), ClientURL: m.cfg.EmbeddedClientURL, PeerURL: m.cfg.EmbeddedPeerURL})
		if err != nil {
			return err
		}
		m.etcd = srv
		endpoints = []string{srv.Endpoint()}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		m.Close()
		return fmt.Errorf("etcd client for %v: %w", endpoints, err)
	}
	m.cli = cli

	if m.cfg.HTTPAddr != "" {
		ln, err := net.Listen("tcp", m.cfg.HTTPAddr)
		if err != nil {
			m.Close()
			return fmt.Errorf("--http-addr: %w", err)
		}
		m.httpLn = ln
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	keys, _ := registry.NewKeys(m.cfg.Prefix) // checked in New
	m.sup, err = supervisor.New(supervisor.Config{
		ID:                 m.cfg.ID,
		Client:             cli,
		Keys:               keys,
		Lease:              lease.Config{TTL: m.cfg.LeaseTTL, Logger: m.log},
		CheckpointInterval: m.cfg.CheckpointInterval,
		Address:            m.advertiseAddr(),
		Version:            Version,
		Logger:             m.log,
		Metrics:            supervisor.NewMetrics(reg),
	})
	if err != nil {
		m.Close()
		return err
	}

	if m.httpLn != nil {
		ln := m.httpLn
		mux := http.NewServeMux()
		mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
			if !m.Ready() {
				http.Error(w, "not ready", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		m.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = m.httpSrv.Serve(ln) }()
	}
	return nil
}

// advertiseAddr is the address published in the member record: the
// configured one, else the bound HTTP address, its unspecified host (":8080",
// "0.0.0.0:8080") replaced by the hostname, which peers can resolve more
// often than they can reach the member's first interface.
func (m *Main) advertiseAddr() string {
	if m.cfg.AdvertiseAddr != "" || m.httpLn == nil {
		return m.cfg.AdvertiseAddr
	}
	host, port, err := net.SplitHostPort(m.httpLn.Addr().String())
	if err != nil {
		return m.httpLn.Addr().String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		if h, err := os.Hostname(); err == nil && h != "" {
			host = h
		}
	}
	return net.JoinHostPort(host, port)
}

func (m *Main) dataDir() string {
	if m.cfg.DataDir == "" {
		return "immortald.etcd"
	}
	return m.cfg.DataDir
}

// Run runs the member until ctx ends, then stops it gracefully and closes
// everything. Open must have succeeded.
func (m *Main) Run(ctx context.Context) error {
	defer m.Close()
	var etcdErr <-chan error
	if m.etcd != nil {
		etcdErr = m.etcd.Err()
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	fatal := make(chan error, 1)
	go func() {
		select {
		case err := <-etcdErr:
			fatal <- fmt.Errorf("embedded etcd failed: %w", err)
			cancel()
		case <-runCtx.Done():
		}
	}()
	m.log.Info("member starting", "id", m.cfg.ID, "version", Version, "lease_ttl", m.cfg.LeaseTTL,
		"checkpoint_interval", m.cfg.CheckpointInterval, "http", m.HTTPAddr(), "prefix", m.cfg.Prefix)
	err := m.sup.Run(runCtx)
	select {
	case ferr := <-fatal:
		return errors.Join(ferr, err)
	default:
		return err
	}
}

// Close releases everything Open acquired. It is safe to call twice.
func (m *Main) Close() {
	if m.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = m.httpSrv.Shutdown(ctx)
		cancel()
		m.httpSrv = nil
	} else if m.httpLn != nil {
		_ = m.httpLn.Close() // bound, but Open failed before serving
	}
	if m.cli != nil {
		_ = m.cli.Close()
		m.cli = nil
	}
	if m.etcd != nil {
		m.etcd.Close()
		m.etcd = nil
	}
}
