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
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/embedetcd"
	"github.com/immortald/immortald/etcdclient"
	"github.com/immortald/immortald/internal/backoff"
	"github.com/immortald/immortald/lease"
	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/supervisor"
	"github.com/immortald/immortald/webui"
	"github.com/immortald/immortald/workload"
	"github.com/immortald/immortald/workload/execkind"
)

// Version is set at build time with -ldflags "-X .../daemon.Version=...".
var Version = "dev"

// Config is everything `immortald run` is told.
type Config struct {
	// ID is the member id. Default: the hostname.
	ID string
	// Endpoints of etcd. Empty: start an embedded etcd.
	Endpoints []string
	// Etcd is how to reach an external etcd: TLS files, user and password
	// (see etcdclient.Config). Its Endpoints are replaced by Endpoints.
	// With no Endpoints it must be empty: the embedded etcd serves plain
	// http on loopback only.
	Etcd etcdclient.Config
	// Prefix of the keyspace. Default "/immortals/".
	Prefix string
	// LeaseTTL of the member's session: whole seconds, from lease.MinTTL
	// (2s) to lease.MaxTTL (10m). Default 5s.
	LeaseTTL time.Duration
	// CheckpointInterval between heartbeats (checkpoints of every life's
	// age): from MinCheckpointInterval to MaxCheckpointInterval, and at most
	// half the LeaseTTL. Default 1s.
	CheckpointInterval time.Duration
	// HTTPAddr serves /livez, /readyz, /metrics and the live page of the
	// cluster at / and /ui (package webui). Default ":8080"; empty string
	// disables it.
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
	// OnSession, if set, is told each session lease as soon as it is
	// granted (see supervisor.Config.OnSession).
	OnSession func(clientv3.LeaseID)
	// Leftover are leases of a dead predecessor to revoke first (see
	// supervisor.Config.Leftover).
	Leftover []clientv3.LeaseID
	// Kinds are the command kinds this member runs, by name (see KindsKey
	// and LoadKinds); New validates them and fills in their defaults. The
	// built-in kind "age" is always run and cannot be declared.
	Kinds map[string]execkind.Config
	// StateDir is the root of the state directories of command lives.
	// Default: os.TempDir()/immortald-<ID>.
	StateDir string
	// GoKinds are kinds whose lives are Go code, for a program that embeds
	// the daemon (see examples/): each a workload.Kind with its New. Their
	// names must be valid kind names, neither "age" nor one of Kinds, and
	// distinct. Requests name them as they name command kinds.
	GoKinds []workload.Kind
}

// The range of the checkpoint interval. Each member writes one heartbeat
// per interval; below 100 ms that is load on etcd for little gain, and above
// a minute a crash loses that much of every life's age.
const (
	MinCheckpointInterval = 100 * time.Millisecond
	MaxCheckpointInterval = time.Minute
)

// Main is one member.
type Main struct {
	cfg     Config
	log     *slog.Logger
	etcd    *embedetcd.Server
	cli     *clientv3.Client
	sup     *supervisor.Supervisor
	httpLn  net.Listener
	httpSrv *http.Server
	ui      *webui.Server
	// denied receives the first request etcd refused for authentication or
	// permission.
	denied chan error
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
		cfg.LeaseTTL = lease.DefaultTTL
	}
	if cfg.CheckpointInterval == 0 {
		cfg.CheckpointInterval = supervisor.DefaultConfig().CheckpointInterval
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
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(os.TempDir(), "immortald-"+cfg.ID)
	}
	cfg.Kinds = maps.Clone(cfg.Kinds)
	if err := validateKinds(cfg.Kinds); err != nil {
		return nil, err
	}
	if len(cfg.Kinds) > 0 {
		if err := execkind.CheckStateRoot(cfg.StateDir); err != nil {
			return nil, err // the checkpoint socket of a hold would not fit
		}
	}
	if err := validateGoKinds(cfg.GoKinds, cfg.Kinds); err != nil {
		return nil, err
	}
	cfg.GoKinds = slices.Clone(cfg.GoKinds)
	if cfg.AdvertiseAddr != "" {
		if host, port, err := net.SplitHostPort(cfg.AdvertiseAddr); err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("--advertise-addr %q: want host:port", cfg.AdvertiseAddr)
		}
	}
	lc := lease.Config{TTL: cfg.LeaseTTL, Margin: lease.DefaultMargin(cfg.LeaseTTL)}
	if err := lc.Validate(); err != nil {
		return nil, fmt.Errorf("--lease-ttl: %w", err)
	}
	if cfg.CheckpointInterval < MinCheckpointInterval || cfg.CheckpointInterval > MaxCheckpointInterval {
		return nil, fmt.Errorf("--checkpoint-interval (%s) must be from %s to %s", cfg.CheckpointInterval, MinCheckpointInterval, MaxCheckpointInterval)
	}
	if cfg.CheckpointInterval > cfg.LeaseTTL/2 {
		return nil, fmt.Errorf("--checkpoint-interval (%s) must be at most half of --lease-ttl (%s): a member gives its lives up when no heartbeat is applied for a TTL, so one failed heartbeat must not be enough", cfg.CheckpointInterval, cfg.LeaseTTL)
	}
	cfg.Etcd.Endpoints = cfg.Endpoints
	if len(cfg.Endpoints) == 0 {
		if cfg.Etcd.TLS() || cfg.Etcd.User != "" || cfg.Etcd.Password != "" {
			return nil, errors.New("etcd TLS and auth settings (--etcd-cacert, --etcd-cert, --etcd-key, --etcd-user, a password) need --etcd-endpoints: the embedded etcd serves plain http on loopback only")
		}
	} else if err := cfg.Etcd.Validate(); err != nil {
		return nil, err
	}
	return &Main{cfg: cfg, log: cfg.Logger, denied: make(chan error, 1)}, nil
}

// Config returns the member's config as New checked it, with its defaults
// filled in (Kinds validated, their programs resolved to absolute paths).
// Its Kinds map is the member's: do not change it.
func (m *Main) Config() Config { return m.cfg }

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

// certInUse returns the etcdclient.Config.OnHandshake of the member: it
// sets expiry to the NotAfter of the client certificate each handshake
// presented, and logs a certificate the first time a handshake presents
// it: the first one at debug level, each renewal picked up after it at
// info.
func (m *Main) certInUse(expiry prometheus.Gauge) func(*x509.Certificate) {
	var (
		mu     sync.Mutex
		serial string
	)
	return func(c *x509.Certificate) {
		if c == nil {
			return
		}
		mu.Lock()
		expiry.Set(float64(c.NotAfter.Unix()))
		prev := serial
		serial = c.SerialNumber.String()
		mu.Unlock()
		attrs := []any{"subject", c.Subject.String(), "serial", serial, "not_after", c.NotAfter.UTC().Format(time.RFC3339), "file", m.cfg.Etcd.Cert}
		switch prev {
		case serial:
		case "":
			m.log.Debug("etcd: connected with client certificate", attrs...)
		default:
			m.log.Info("etcd: connected with a new client certificate", append(attrs, "previous_serial", prev)...)
		}
	}
}

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
	ec := m.cfg.Etcd
	ec.Endpoints = endpoints
	ec.DialTimeout = etcdclient.DialTimeout
	ec.OnDenied = func(err error) {
		select {
		case m.denied <- err:
		default:
		}
	}
	var certExpiry prometheus.Gauge
	if ec.Cert != "" {
		certExpiry = prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "immortald_etcd_client_certificate_expiry_timestamp_seconds",
			Help: "When the client certificate that the member presented in its latest TLS handshake with etcd expires (its NotAfter), in seconds since the Unix epoch. A renewed certificate shows here once the member has connected again with it.",
		})
		ec.OnHandshake = m.certInUse(certExpiry)
	}
	// Endpoints that stop answering (a frozen etcd member, a lost node)
	// are left out until they answer again (etcdclient's health.go).
	endpointsOut := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "immortald_etcd_endpoints_out",
		Help: "etcd endpoints that did not answer the member's status probes (every 500 ms, each within 1 s, two in a row); the member leaves them out while another one answers.",
	})
	ec.HealthInterval = etcdclient.DefaultHealthInterval
	ec.OnEndpointsOut = func(out []string) { endpointsOut.Set(float64(len(out))) }
	ec.Logger = m.log
	m.cfg.Etcd = ec
	cli, err := etcdclient.New(ec)
	if err != nil {
		m.Close()
		return etcdclient.Explain(err, ec, m.cfg.Prefix)
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
	reg.MustRegister(endpointsOut)
	if certExpiry != nil {
		reg.MustRegister(certExpiry)
	}
	keys, _ := registry.NewKeys(m.cfg.Prefix) // checked in New
	metrics := supervisor.NewMetrics(reg)
	metrics.InitChildKinds(slices.Collect(maps.Keys(m.cfg.Kinds))...)
	m.sup, err = supervisor.New(supervisor.Config{
		ID:                 m.cfg.ID,
		Client:             cli,
		Keys:               keys,
		Lease:              lease.Config{TTL: m.cfg.LeaseTTL, Logger: m.log},
		CheckpointInterval: m.cfg.CheckpointInterval,
		Address:            m.advertiseAddr(),
		Version:            Version,
		Logger:             m.log,
		Metrics:            metrics,
		OnSession:          m.cfg.OnSession,
		Leftover:           m.cfg.Leftover,
		Kinds:              m.kinds(metrics), // the children's exits and restarts are counted
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
		m.ui = webui.New(webui.Config{Client: cli, Keys: keys, Member: m.cfg.ID, Logger: m.log})
		mux.Handle("/", m.ui) // the page at / and /ui, its data under /ui/; 404 for any other path
		m.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		srv := m.httpSrv // Close may clear the field before Serve starts
		go func() { _ = srv.Serve(ln) }()
	}
	return nil
}

// preflight checks, before the member campaigns, that etcd takes its
// credentials and lets it read and write the prefix: a refusal ends Run
// with the worded cause (authentication, permission on the prefix, TLS).
// An etcd that does not answer is waited for, as the supervisor would; a
// ctx that ends first is no error. A refusal here also reaches m.denied,
// but Run returns before it looks there.
func (m *Main) preflight(ctx context.Context) error {
	retry := backoff.New(200*time.Millisecond, 5*time.Second)
	var warned time.Time
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := etcdclient.Check(cctx, m.cli, m.cfg.Prefix)
		cancel()
		if ctx.Err() != nil {
			return nil // stopped before the check: nothing to report
		}
		if err == nil {
			return nil
		}
		err = etcdclient.Explain(err, m.cfg.Etcd, m.cfg.Prefix)
		var p *etcdclient.Problem
		if errors.As(err, &p) && p.Cause != "unreachable" {
			return err
		}
		if time.Since(warned) >= probeEvery {
			m.log.Warn("cannot reach etcd; will retry", "err", err)
			warned = time.Now()
		}
		retry.Wait(ctx)
	}
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
	if err := m.preflight(ctx); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return nil // stopped while waiting for etcd
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	fatal := make(chan error, 1)
	go func() {
		select {
		case err := <-etcdErr:
			fatal <- fmt.Errorf("embedded etcd failed: %w", err)
			cancel()
		case err := <-m.denied:
			// Every write of a holder is fenced through etcd: one it may
			// no longer make is a life it can no longer run safely.
			err = etcdclient.Explain(err, m.cfg.Etcd, m.cfg.Prefix)
			m.log.Error("etcd refused this member's credentials: stopping every life and exiting", "err", err)
			fatal <- err
			cancel()
		case <-runCtx.Done():
		}
	}()
	m.log.Info("member starting", "id", m.cfg.ID, "version", Version, "lease_ttl", m.cfg.LeaseTTL,
		"checkpoint_interval", m.cfg.CheckpointInterval, "http", m.HTTPAddr(), "prefix", m.cfg.Prefix)
	probing := make(chan struct{})
	go func() {
		defer close(probing)
		m.probeWhileUnready(runCtx)
	}()
	err := m.sup.Run(runCtx)
	cancel()
	<-probing
	select {
	case ferr := <-fatal:
		return errors.Join(ferr, err)
	default:
		return err
	}
}

// probeEvery is how often a member that is not ready says which etcd
// endpoints it cannot reach, and why; the first look comes after
// probeFirst, time enough for a healthy etcd to grant a session.
const (
	probeFirst = 3 * time.Second
	probeEvery = 10 * time.Second
)

// probeWhileUnready probes every etcd endpoint while the member is not ready
// (no session, or heartbeats failing) and logs one warning per endpoint that
// cannot be reached, naming it and the reason (refused, no answer, TLS, not
// an etcd): the etcd client itself only ever says "context deadline
// exceeded". Each round reads the TLS files anew, as the client does. It
// stops when ctx ends.
func (m *Main) probeWhileUnready(ctx context.Context) {
	t := time.NewTimer(probeFirst)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		t.Reset(probeEvery)
		if m.Ready() {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		errs := etcdclient.ProbeEndpoints(pctx, m.cfg.Etcd)
		cancel()
		if ctx.Err() != nil {
			return
		}
		reached := 0
		for i, err := range errs {
			if err != nil {
				m.log.Warn("cannot reach etcd", "endpoint", m.cfg.Etcd.Endpoints[i], "err", err)
			} else {
				reached++
			}
		}
		if reached > 0 {
			m.log.Warn("the member is not ready although etcd answers: no session yet, or heartbeats failing (see the lines before)",
				"endpoints_reached", reached, "endpoints", len(errs))
		}
	}
}

// Close releases everything Open acquired. It is safe to call twice.
func (m *Main) Close() {
	if m.ui != nil {
		m.ui.Close() // ends the page's streams, which Shutdown would wait for
		m.ui = nil
	}
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
