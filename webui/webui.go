// Package webui serves the live page of an immortald cluster on a member's
// HTTP address: its members (id, address, kinds, pid, ready, lives held),
// its lives (name, kind, holder, age, state, incarnation, fencing token,
// child status) and a log of what happened to them, updated live with
// server-sent events. Everything comes from etcd, so every member shows the
// whole cluster, the same.
//
// Endpoints (Server is an http.Handler for all of them):
//
//	GET /, /ui            the page (HTML; its script and style under /ui/)
//	GET /ui/api/snapshot  the cluster now, as JSON (a Snapshot)
//	GET /ui/api/events    text/event-stream: event "snapshot" (a Snapshot)
//	                      first, then event "delta" (a Delta) per change
//
// Guarantees:
//   - One watch per Server, whatever the number of clients: a
//     registry.StatusWatch (one read of the keyspace, then one watch of the
//     prefix, the members and their heartbeats included) feeds every tab.
//     No request of a client reaches etcd. The watch starts with the first
//     client and stops Linger after the last one left: a member nobody
//     looks at costs etcd nothing.
//   - A client gets a snapshot, then every change after it, in order, with
//     none missed or repeated. The event log is what this watch saw: it
//     starts with the watch, and a snapshot carries its last 200 entries.
//     Its words (Event*) are derived from etcd's records at each revision,
//     as their docs say; a handoff and a failover are told apart by whether
//     the holder's member record was still there when the life stopped. A client that has ClientBuffer messages
//     queued and unsent is disconnected, never waited for (its browser
//     reconnects and starts again from a snapshot): memory per client is
//     bounded, and the watch never blocks on a client.
//   - Read-only: GET and HEAD; any other method is 405.
//   - No secret: member records (id, address, version, start, pid, kind
//     names), the lives' statuses (as `immortald ls -o json` shows them),
//     fencing tokens and the event log. Never the kinds' commands or
//     environment (they are not in etcd), credentials, or a state's bytes
//     (the watch keeps state records without their data).
//   - Self-contained: every asset is embedded in the binary; the page loads
//     nothing from anywhere but the member that served it (its
//     Content-Security-Policy says so to the browser).
package webui

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
)

//go:embed assets
var assets embed.FS

// Defaults of Config.
const (
	DefaultLinger       = 30 * time.Second
	DefaultClientBuffer = 64
)

// Config is what a Server serves.
type Config struct {
	// Client reads and watches etcd. The Server does not close it.
	Client *clientv3.Client
	// Keys is the keyspace shown.
	Keys registry.Keys
	// Member is the id of the member that serves the page (shown on it).
	Member string
	// Logger. Default slog.Default().
	Logger *slog.Logger
	// Linger is how long the watch outlives its last client, so that a
	// reload does not read the keyspace again. Default DefaultLinger.
	Linger time.Duration
	// ClientBuffer is how many messages may wait for a slow client before
	// it is disconnected. Default DefaultClientBuffer.
	ClientBuffer int
}

// Server serves the page and its data. Create it with New; Close it.
type Server struct {
	cfg Config
	hub *hub
}

// New returns a Server of cfg; nothing starts before the first client.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Linger <= 0 {
		cfg.Linger = DefaultLinger
	}
	if cfg.ClientBuffer <= 0 {
		cfg.ClientBuffer = DefaultClientBuffer
	}
	return &Server{cfg: cfg, hub: newHub(cfg)}
}

// Close ends every client's stream and the watch, and waits for the watch
// to end. Requests after it get 503.
func (s *Server) Close() { s.hub.close() }

// Stats is what a Server counts, for tests and logs.
type Stats struct {
	// Clients streaming now.
	Clients int
	// Dropped counts clients disconnected for a full buffer.
	Dropped int64
	// Watching reports whether the watch runs.
	Watching bool
}

// Stats returns the Server's counts now.
func (s *Server) Stats() Stats { return s.hub.stats() }

// ServeHTTP serves the endpoints of the package doc; other paths are 404.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "read-only: GET or HEAD", http.StatusMethodNotAllowed)
		return
	}
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	switch r.URL.Path {
	case "/", "/ui", "/ui/":
		s.asset(w, r, "index.html", "text/html; charset=utf-8")
	case "/ui/app.js":
		s.asset(w, r, "app.js", "text/javascript; charset=utf-8")
	case "/ui/style.css":
		s.asset(w, r, "style.css", "text/css; charset=utf-8")
	case "/ui/api/snapshot":
		s.snapshot(w, r)
	case "/ui/api/events":
		s.events(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (s *Server) asset(w http.ResponseWriter, r *http.Request, name, ctype string) {
	b, err := assets.ReadFile("assets/" + name)
	if err != nil {
		http.Error(w, "missing asset", http.StatusInternalServerError) // cannot happen: embedded
		return
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(b))
}

// firstRead bounds how long a request waits for the watch's first read.
const firstRead = 15 * time.Second

// subscribe waits for the watch and returns its snapshot, with a client
// registered after it when stream is set. Errors are written to w.
func (s *Server) subscribe(w http.ResponseWriter, r *http.Request, stream bool) (*client, Snapshot, bool) {
	ctx, cancel := context.WithTimeout(r.Context(), firstRead)
	defer cancel()
	c, snap, err := s.hub.subscribe(ctx, stream)
	if err != nil {
		if r.Context().Err() == nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		}
		return nil, Snapshot{}, false
	}
	return c, snap, true
}

func (s *Server) snapshot(w http.ResponseWriter, r *http.Request) {
	_, snap, ok := s.subscribe(w, r, false)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if r.Method == http.MethodHead {
		return
	}
	_ = json.NewEncoder(w).Encode(snap)
}

// Stream timings: a comment line every keepAlive keeps proxies (kubectl
// port-forward) from closing an idle stream; a write that takes longer than
// writeTimeout ends the stream; the browser reconnects retryMS after a
// stream ends.
const (
	keepAlive    = 15 * time.Second
	writeTimeout = 10 * time.Second
	retryMS      = 1000
)

func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodHead {
		w.Header().Set("Content-Type", "text/event-stream")
		return
	}
	c, snap, ok := s.subscribe(w, r, true)
	if !ok {
		return
	}
	defer s.hub.release(c)
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	first, err := frame("snapshot", snap)
	if err != nil {
		s.cfg.Logger.Error("web ui: cannot encode a snapshot", "err", err)
		return
	}
	send := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !send(append(fmt.Appendf(nil, "retry: %d\n\n", retryMS), first...)) {
		return
	}
	ping := time.NewTicker(keepAlive)
	defer ping.Stop()
	for {
		select {
		case b, open := <-c.ch:
			if !open || !send(b) {
				return // dropped for a full buffer, or the server closes
			}
		case <-ping.C:
			if !send([]byte(": keep-alive\n\n")) {
				return
			}
		case <-r.Context().Done():
			return
		}
	}
}

// frame is one server-sent event: its name and v as JSON on one data line.
func frame(event string, v any) ([]byte, error) {
	b, err := json.Marshal(v) // one line: Marshal writes no newline
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(b)+len(event)+16)
	out = append(out, "event: "...)
	out = append(out, event...)
	out = append(out, "\ndata: "...)
	out = append(out, b...)
	return append(out, "\n\n"...), nil
}

// errClosed answers requests after Close.
var errClosed = errors.New("web ui: the member is shutting down")
