package webui_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/daemon"
	"github.com/immortald/immortald/internal/etcdtest"
	"github.com/immortald/immortald/internal/membertest"
	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/webui"
	"github.com/immortald/immortald/workload/execkind"
)

// bound is generous: a few lease TTLs on a loaded machine.
const bound = 30 * time.Second

// serve serves a webui.Server of cfg (its Client and Keys filled in) on a
// loopback port.
func serve(t *testing.T, cli *clientv3.Client, cfg webui.Config) (*webui.Server, string) {
	t.Helper()
	cfg.Client, cfg.Keys = cli, mustKeys(t)
	ui := webui.New(cfg)
	ts := httptest.NewServer(ui)
	t.Cleanup(ts.Close)
	t.Cleanup(ui.Close) // first: it ends the streams ts.Close waits for
	return ui, ts.URL
}

func mustKeys(t *testing.T) registry.Keys {
	t.Helper()
	keys, err := registry.NewKeys(registry.DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// event is one server-sent event as it arrived.
type event struct {
	name string
	data []byte
	at   time.Time
}

// stream is a client of /ui/api/events that folds what it gets into the
// cluster as the page would have it.
type stream struct {
	t      *testing.T
	ch     chan event
	all    bytes.Buffer // every byte received, for the secret check
	mu     sync.Mutex
	lives  map[string]webui.LifeView
	member map[string]webui.MemberView
	log    []webui.Entry
	ages   map[int64]int64 // life id -> the highest stored age seen
}

func openStream(t *testing.T, base string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/ui/api/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		cancel()
		t.Fatalf("GET /ui/api/events: %s, Content-Type %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	s := &stream{t: t, ch: make(chan event, 4096), lives: map[string]webui.LifeView{}, member: map[string]webui.MemberView{}, ages: map[int64]int64{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(s.ch)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 64<<20)
		var ev event
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.all.WriteString(line + "\n")
			s.mu.Unlock()
			switch {
			case strings.HasPrefix(line, "event: "):
				ev.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				ev.data = []byte(strings.TrimPrefix(line, "data: "))
			case line == "" && ev.name != "":
				ev.at = time.Now()
				s.ch <- ev
				ev = event{}
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = resp.Body.Close()
		<-done
	})
	return s
}

// next folds events in until one satisfies cond (given the cluster as
// folded so far), and returns it.
func (s *stream) next(what string, cond func(ev event) bool) event {
	s.t.Helper()
	deadline := time.After(bound)
	for {
		select {
		case ev, ok := <-s.ch:
			if !ok {
				s.t.Fatalf("the stream ended while waiting for %s", what)
			}
			s.fold(ev)
			if cond(ev) {
				return ev
			}
		case <-deadline:
			s.t.Fatalf("no %s within %s; lives %+v", what, bound, s.lives)
		}
	}
}

// until folds events in until cond holds of the cluster as folded (at
// once, if it holds already).
func (s *stream) until(what string, cond func() bool) {
	s.t.Helper()
	s.drain()
	if !cond() {
		s.next(what, func(event) bool { return cond() })
	}
}

// drain folds in the events that have arrived.
func (s *stream) drain() {
	for {
		select {
		case ev, ok := <-s.ch:
			if !ok {
				return
			}
			s.fold(ev)
		default:
			return
		}
	}
}

func (s *stream) fold(ev event) {
	s.t.Helper()
	note := func(v webui.LifeView) {
		if v.AgeMS < s.ages[v.LifeID] {
			s.t.Errorf("%s's stored age went back from %d to %d ms", v.Name, s.ages[v.LifeID], v.AgeMS)
		}
		s.ages[v.LifeID] = max(s.ages[v.LifeID], v.AgeMS)
		s.lives[v.Name] = v
	}
	setMembers := func(ms []webui.MemberView) {
		s.member = map[string]webui.MemberView{}
		for _, m := range ms {
			s.member[m.ID] = m
		}
	}
	switch ev.name {
	case "snapshot":
		var snap webui.Snapshot
		decode(s.t, ev.data, &snap)
		s.lives = map[string]webui.LifeView{}
		for _, v := range snap.Lives {
			note(v)
		}
		setMembers(snap.Members)
		s.log = snap.Log
	case "delta":
		var d webui.Delta
		decode(s.t, ev.data, &d)
		for _, name := range d.Removed {
			delete(s.lives, name)
		}
		for _, v := range d.Lives {
			note(v)
		}
		if d.Members != nil {
			setMembers(d.Members)
		}
		if len(s.log) > 0 && len(d.Log) > 0 && d.Log[0].Seq != s.log[len(s.log)-1].Seq+1 {
			s.t.Errorf("log entry %d after %d: one missed or repeated", d.Log[0].Seq, s.log[len(s.log)-1].Seq)
		}
		s.log = append(s.log, d.Log...)
	default:
		s.t.Errorf("event %q, want snapshot or delta", ev.name)
	}
}

func decode(t *testing.T, b []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

// running reports whether name runs (on holder, if not "").
func (s *stream) running(name, holder string) bool {
	v, ok := s.lives[name]
	return ok && v.State == registry.StateRunning && (holder == "" || v.Holder == holder)
}

// entries returns the log entries of life with event ev.
func (s *stream) entries(life, ev string) []webui.Entry {
	var out []webui.Entry
	for _, e := range s.log {
		if e.Life == life && e.Event == ev {
			out = append(out, e)
		}
	}
	return out
}

func put(t *testing.T, cli *clientv3.Client, key, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if _, err := cli.Put(ctx, key, value); err != nil {
		t.Fatal(err)
	}
}

// The stream of a page: a snapshot, then deltas as lives move. A graceful
// stop of Adam's holder shows as "stopped" (the holder let it go) and then
// "handed off" to the other member, with its new fencing token and an age
// that did not go back; a member that leaves shows as "left". The snapshot
// endpoint shows the same cluster.
func TestStreamSnapshotThenHandoff(t *testing.T) {
	srv := etcdtest.MustStart(t)
	ep := srv.Endpoint()
	cli := etcdtest.MustClient(t, ep)
	keys := mustKeys(t)
	put(t, cli, keys.Life("Adam"), `{"labels":{"team":"demo"}}`)
	members := map[string]*membertest.Member{"m1": membertest.Start(t, ep, "m1", daemon.Config{HTTPAddr: ""})}
	_, base := serve(t, cli, webui.Config{Member: "viewer"})

	s := openStream(t, base)
	ev := s.next("a snapshot", func(event) bool { return true })
	if ev.name != "snapshot" {
		t.Fatalf("first event %q, want snapshot", ev.name)
	}
	var snap webui.Snapshot
	decode(t, ev.data, &snap)
	if snap.Member != "viewer" || snap.Rev == 0 || len(snap.Lives) != 1 || snap.Lives[0].Name != "Adam" || snap.Lives[0].Labels["team"] != "demo" {
		t.Fatalf("snapshot = %+v, want Adam, from viewer, at a revision", snap)
	}
	s.until("Adam running on m1", func() bool { return s.running("Adam", "m1") })
	members["m2"] = membertest.Start(t, ep, "m2", daemon.Config{HTTPAddr: ""})
	s.until("m2 ready", func() bool { return s.member["m2"].Ready })
	time.Sleep(1500 * time.Millisecond) // placement may hand Adam to m2 first
	s.drain()

	for round := range 2 {
		old := s.lives["Adam"]
		if old.State != registry.StateRunning || old.FencingToken == 0 {
			t.Fatalf("round %d: Adam = %+v, want running with a fencing token", round, old)
		}
		other := "m1"
		if old.Holder == "m1" {
			other = "m2"
		}
		stoppedAt := time.Now()
		members[old.Holder].Stop(t)
		ev := s.next("Adam on "+other, func(event) bool { return s.running("Adam", other) })
		moved := s.lives["Adam"]
		t.Logf("round %d: graceful stop of %s to Adam on %s in the stream: %v", round, old.Holder, other, ev.at.Sub(stoppedAt))
		if moved.FencingToken <= old.FencingToken || moved.Incarnation <= old.Incarnation || moved.AgeMS < old.AgeMS {
			t.Errorf("Adam moved: %+v, after %+v: want a greater token and incarnation, no younger", moved, old)
		}
		stops, handoffs := s.entries("Adam", webui.EventStopped), s.entries("Adam", webui.EventHandedOff)
		if len(stops) == 0 || stops[len(stops)-1].Member != old.Holder || !strings.Contains(stops[len(stops)-1].Detail, "let it go") {
			t.Errorf("log %+v: want Adam stopped by %s, who let it go", s.log, old.Holder)
		}
		if len(handoffs) == 0 || handoffs[len(handoffs)-1].From != old.Holder || handoffs[len(handoffs)-1].Member != other {
			t.Errorf("log %+v: want Adam handed off from %s to %s", s.log, old.Holder, other)
		}
		if len(s.entries("Adam", webui.EventFailedOver)) != 0 {
			t.Errorf("log %+v: a graceful stop shows as a failover", s.log)
		}
		s.until(old.Holder+" gone", func() bool { _, ok := s.member[old.Holder]; return !ok })
		left := false
		for _, e := range s.log {
			left = left || (e.Event == webui.EventLeft && e.Member == old.Holder)
		}
		if !left {
			t.Errorf("log %+v: want %s left", s.log, old.Holder)
		}
		if m := s.member[other]; !m.Ready || m.LivesHeld != 1 {
			t.Errorf("member %s = %+v, want ready, holding Adam", other, m)
		}
		delete(members, old.Holder)
		if round == 0 {
			members[old.Holder] = membertest.Start(t, ep, old.Holder, daemon.Config{HTTPAddr: ""})
			s.until(old.Holder+" back", func() bool { return s.member[old.Holder].Ready })
			time.Sleep(1500 * time.Millisecond)
			s.drain()
		}
	}

	// The snapshot endpoint: the same cluster, as JSON.
	resp, err := http.Get(base + "/ui/api/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var now webui.Snapshot
	b, _ := io.ReadAll(resp.Body)
	decode(t, b, &now)
	if resp.Header.Get("Content-Type") != "application/json" || len(now.Lives) != 1 || now.Lives[0].Holder != s.lives["Adam"].Holder ||
		len(now.Members) != 1 || now.Members[0].LivesHeld != 1 || len(now.Log) == 0 {
		t.Errorf("snapshot = %s, want Adam on %s, its one member, and the log", b, s.lives["Adam"].Holder)
	}
}

// What the page shows of a command life: its child's status and fencing
// token; never the kind's environment or the bytes of its state, although
// etcd holds them. No asset names another origin.
func TestNoSecrets(t *testing.T) {
	const envSecret, stateSecret = "env-Secret-7f1e2d", "state-Secret-b4c9a0"
	stateDir, err := os.MkdirTemp("", "wu") // short: the checkpoint socket's path must fit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(stateDir) })
	srv := etcdtest.MustStart(t)
	ep := srv.Endpoint()
	cli := etcdtest.MustClient(t, ep)
	keys := mustKeys(t)
	script := `printf '%s' "$VAULT_TOKEN" | tr e E > /dev/null; printf 'state-Secret-b4c9a0' > "$IMMORTALD_STATE_DIR/state"; exec sleep 600`
	membertest.Start(t, ep, "m1", daemon.Config{HTTPAddr: "", StateDir: stateDir,
		Kinds: map[string]execkind.Config{"vault": {Command: []string{"/bin/sh", "-c", script}, Env: map[string]string{"VAULT_TOKEN": envSecret}}}})
	put(t, cli, keys.Life("vault1"), `{"kind":"vault"}`)
	_, base := serve(t, cli, webui.Config{Member: "m1"})
	s := openStream(t, base)
	s.until("vault1 running with its child", func() bool {
		v := s.lives["vault1"]
		return s.running("vault1", "m1") && v.Child != nil && v.Child.State == "running"
	})
	var rec registry.StateRecord
	for deadline := time.Now().Add(bound); ; time.Sleep(50 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), bound)
		rec, _, err = registry.GetState(ctx, cli, keys, "vault1")
		cancel()
		if err == nil && string(rec.Data) == stateSecret {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no state %q checkpointed within %s: %+v, %v", stateSecret, bound, rec, err)
		}
	}
	if v := s.lives["vault1"]; v.FencingToken != rec.HolderRev || v.Kind != "vault" {
		t.Errorf("vault1 = %+v, want kind vault and the state record's token %d", v, rec.HolderRev)
	}

	var shown bytes.Buffer
	for _, path := range []string{"/", "/ui", "/ui/app.js", "/ui/style.css", "/ui/api/snapshot"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", path, resp.Status)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("GET %s: Content-Security-Policy %q, want default-src 'self'", path, csp)
		}
		if path != "/ui/api/snapshot" && bytes.Contains(b, []byte("://")) {
			t.Errorf("GET %s names another origin: %s", path, b)
		}
		shown.Write(b)
	}
	s.mu.Lock()
	shown.Write(s.all.Bytes())
	s.mu.Unlock()
	for _, secret := range []string{envSecret, "VAULT_TOKEN", stateSecret, base64.StdEncoding.EncodeToString([]byte(stateSecret)), "/bin/sh", stateDir} {
		if bytes.Contains(shown.Bytes(), []byte(secret)) {
			t.Errorf("the page shows %q", secret)
		}
	}
	if !bytes.Contains(shown.Bytes(), []byte(`"vault1"`)) {
		t.Error("the page does not show vault1 at all")
	}
}

// The page is read-only: every method but GET and HEAD is 405 on every
// path. A member serves it at / and /ui beside its other endpoints, and a
// member with a stream open still stops promptly.
func TestReadOnlyOnAMember(t *testing.T) {
	srv := etcdtest.MustStart(t)
	ep := srv.Endpoint()
	m := membertest.Start(t, ep, "m1", daemon.Config{HTTPAddr: "127.0.0.1:0"})
	base := "http://" + m.Main.HTTPAddr()
	for _, path := range []string{"/", "/ui", "/ui/", "/ui/app.js", "/ui/api/snapshot", "/ui/api/events", "/ui/nothing"} {
		for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
			req, _ := http.NewRequest(method, base+path, strings.NewReader("{}"))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("%s %s: %s, Allow %q; want 405, GET, HEAD", method, path, resp.Status, resp.Header.Get("Allow"))
			}
		}
	}
	for path, want := range map[string]int{"/": 200, "/ui": 200, "/ui/nothing": 404, "/livez": 200, "/metrics": 200} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %s, want %d", path, resp.Status, want)
		}
		if (path == "/" || path == "/ui") && !bytes.Contains(b, []byte(`<script src="/ui/app.js"`)) {
			t.Errorf("GET %s: %s, want the page", path, b)
		}
	}
	s := openStream(t, base)
	s.until("m1 in the snapshot", func() bool { return s.member["m1"].ID == "m1" })
	start := time.Now()
	m.Stop(t)
	t.Logf("a member with a stream open stopped in %v", time.Since(start))
	for range s.ch { // the stream ends with the member
	}
}

// The watch starts with the first client and stops Linger after the last
// one left.
func TestWatchFollowsItsClients(t *testing.T) {
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	ui, base := serve(t, cli, webui.Config{Linger: 100 * time.Millisecond})
	if st := ui.Stats(); st.Watching || st.Clients != 0 {
		t.Fatalf("before any client: %+v, want no watch", st)
	}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/ui/api/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if st := ui.Stats(); !st.Watching || st.Clients != 1 {
		t.Errorf("with a client: %+v, want a watch and the client", st)
	}
	cancel()
	resp.Body.Close()
	for deadline := time.Now().Add(bound); ui.Stats().Watching; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the watch still runs %s after its last client left: %+v", bound, ui.Stats())
		}
	}
}

// Clients that read nothing are disconnected once DefaultClientBuffer
// messages wait for them; they never hold the watch up: a client that reads gets
// every change, promptly, while 40 that do not are connected.
func TestSlowClientsDoNotBlock(t *testing.T) {
	srv := etcdtest.MustStart(t)
	cli := etcdtest.MustClient(t, srv.Endpoint())
	keys := mustKeys(t)
	ui, base := serve(t, cli, webui.Config{})
	fast := openStream(t, base)
	fast.next("a snapshot", func(event) bool { return true })

	const slow = 40
	addr := strings.TrimPrefix(base, "http://")
	for range slow {
		d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			var err error
			_ = c.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
			return err
		}}
		conn, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		if _, err := fmt.Fprintf(conn, "GET /ui/api/events HTTP/1.1\r\nHost: %s\r\n\r\n", addr); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(bound); ui.Stats().Clients < slow+1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%+v, want %d clients", ui.Stats(), slow+1)
		}
	}

	// 600 changes of 6 KiB each: about 3.6 MB for every client, far more
	// than the kernel's buffers and DefaultClientBuffer messages hold.
	label := strings.Repeat("x", 6<<10)
	const changes = 600
	// One change a frame: each write waits until the reading client has
	// the one before, so the watch cannot hand the hub several changes in
	// one response (it does when the hub lags, and then fewer, larger
	// frames than the slow clients' queues hold would go out).
	start := time.Now()
	for i := range changes {
		put(t, cli, keys.Life("Big"), fmt.Sprintf(`{"labels":{"n":"%d","pad":%q}}`, i, label))
		n := fmt.Sprint(i)
		fast.next("change "+n, func(event) bool { return fast.lives["Big"].Labels["n"] == n })
	}
	fast.drain()
	st := ui.Stats()
	t.Logf("%d changes written, each read by the reading client, in %v; %+v", changes, time.Since(start), st)
	if st.Dropped < slow/2 {
		t.Errorf("%+v: want most of the %d clients that read nothing dropped", st, slow)
	}
	if n := len(fast.entries("Big", webui.EventChanged)) + len(fast.entries("Big", webui.EventRequested)); n != changes {
		t.Errorf("the reading client got %d of the %d changes", n, changes)
	}
}
