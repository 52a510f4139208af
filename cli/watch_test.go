package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/cli"
	"github.com/immortald/immortald/daemon"
	"github.com/immortald/immortald/embedetcd"
	"github.com/immortald/immortald/internal/membertest"
	"github.com/immortald/immortald/registry"
)

// lines is a writer that hands each complete line on, with the time it
// arrived.
type lines struct {
	mu   sync.Mutex
	part []byte
	all  []line
	c    chan line
}

type line struct {
	text string
	at   time.Time
}

func newLines() *lines { return &lines{c: make(chan line, 1024)} }

func (l *lines) Write(p []byte) (int, error) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.part = append(l.part, p...)
	for {
		i := bytes.IndexByte(l.part, '\n')
		if i < 0 {
			return len(p), nil
		}
		ln := line{text: string(l.part[:i]), at: now}
		l.part = l.part[i+1:]
		l.all = append(l.all, ln)
		select {
		case l.c <- ln:
		default: // the test reads only what it waits for
		}
	}
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, ln := range l.all {
		b.WriteString(ln.text + "\n")
	}
	return b.String()
}

// watcher is a watching command running in the background.
type watcher struct {
	out    *lines
	stderr *bytes.Buffer // read only after the command ended
	done   chan int      // its exit code, once
	ended  chan struct{} // closed when it ended
}

func startWatch(t *testing.T, args ...string) *watcher {
	t.Helper()
	w := &watcher{out: newLines(), stderr: &bytes.Buffer{}, done: make(chan int, 1), ended: make(chan struct{})}
	go func() {
		defer close(w.ended)
		w.done <- cli.Execute(args, w.out, w.stderr)
	}()
	t.Cleanup(func() {
		select {
		case <-w.ended:
		default:
			t.Errorf("immortald %q still runs at the end of the test", args)
		}
	})
	return w
}

// next waits for the next line that match accepts.
func (w *watcher) next(t *testing.T, what string, match func(string) bool) line {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case ln := <-w.out.c:
			if match(ln.text) {
				return ln
			}
		case code := <-w.done:
			t.Fatalf("the command exited %d while waiting for %s; stdout:\n%s\nstderr: %s", code, what, w.out, w.stderr)
		case <-deadline:
			t.Fatalf("no line with %s within 30s; stdout so far:\n%s", what, w.out)
		}
	}
}

// interrupt sends sig to this process, as Ctrl-C (SIGINT) or kill (SIGTERM)
// would, and waits for the command's exit code. The test's own Notify keeps
// the signal from ending the test binary if the command has stopped
// listening.
func (w *watcher) interrupt(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	ignore := make(chan os.Signal, 1)
	signal.Notify(ignore, sig)
	defer signal.Stop(ignore)
	if err := syscall.Kill(os.Getpid(), sig); err != nil {
		t.Fatal(err)
	}
	return w.wait(t, sig.String())
}

func (w *watcher) wait(t *testing.T, after string) int {
	t.Helper()
	select {
	case code := <-w.done:
		return code
	case <-time.After(30 * time.Second):
		t.Fatalf("the command did not end within 30s of %s", after)
		return -1
	}
}

// startMember starts a real member (package daemon) in this process, on
// the test's etcd, without a watchdog or HTTP.
func startMember(t *testing.T, ep, id string) *membertest.Member {
	t.Helper()
	return membertest.Start(t, ep, id, daemon.Config{})
}

func parseLine(t *testing.T, text string) cli.WatchLine {
	t.Helper()
	var l cli.WatchLine
	dec := json.NewDecoder(strings.NewReader(text))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		t.Fatalf("ls -w -o json printed %q: %v", text, err)
	}
	return l
}

// TestLsWatchHandoffs hands a life off between real members several times
// while `ls -w -o json` runs, and measures, for each handoff, the time from
// the new holder's age record write (its Time, the holder's clock when it
// took the age; same machine) to the "moved" line arriving. The bound, 200
// ms, is the issue's; it is asserted on the median of the handoffs, so one
// slow scheduling of a loaded machine cannot fail the test.
func TestLsWatchHandoffs(t *testing.T) {
	ep, etcd := server(t)
	ctx := context.Background()
	if _, err := etcd.Put(ctx, "/immortals/lives/Adam", ""); err != nil {
		t.Fatal(err)
	}
	w := startWatch(t, "ls", "-w", "-o", "json", "--etcd-endpoints", ep)
	first := parseLine(t, w.next(t, "Adam listed", func(string) bool { return true }).text)
	if first.Event != registry.EventListed || first.Life.Name != "Adam" || first.Life.State != registry.StateWaiting || first.Rev == 0 {
		t.Fatalf("first line = %+v, want Adam listed, waiting", first)
	}

	members := map[string]*membertest.Member{}
	n := 0
	add := func() {
		n++
		id := fmt.Sprintf("m%d", n)
		members[id] = startMember(t, ep, id)
	}
	add()
	started := parseLine(t, w.next(t, "Adam started", func(s string) bool { return strings.Contains(s, `"event":"started"`) }).text)
	if started.Life.Holder != "m1" || started.Life.State != registry.StateRunning || started.Life.Incarnation != 1 {
		t.Fatalf("started line = %+v, want Adam running on m1, incarnation 1", started)
	}
	holder := "m1"
	add()

	const handoffs = 7
	var lat []time.Duration
	for range handoffs {
		old := holder
		members[old].Stop(t)
		delete(members, old)
		ln := w.next(t, "Adam moved off "+old, func(s string) bool {
			l := parseLine(t, s)
			return l.Event == registry.EventMoved && l.Life.Holder != old
		})
		l := parseLine(t, ln.text)
		holder = l.Life.Holder
		resp, err := etcd.Get(ctx, "/immortals/ages/Adam", clientv3.WithRev(l.Rev))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("age record at revision %d: %v %v", l.Rev, resp, err)
		}
		rec, err := registry.ParseAgeRecord(resp.Kvs[0].Value)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Kvs[0].ModRevision != l.Rev || rec.Holder != holder || rec.Incarnation != l.Life.Incarnation {
			t.Fatalf("the moved line %s is not of the new holder's age record write (%+v at revision %d)", ln.text, rec, resp.Kvs[0].ModRevision)
		}
		lat = append(lat, ln.at.Sub(rec.Time))
		add()
	}
	sorted := slices.Clone(lat)
	slices.Sort(sorted)
	median := sorted[len(sorted)/2]
	t.Logf("age record write to moved line, %d handoffs: %v; median %v, max %v", len(lat), lat, median, sorted[len(sorted)-1])
	if median > 200*time.Millisecond {
		t.Errorf("median latency from the new holder's age record write to the moved line = %v, want at most 200ms (all: %v)", median, lat)
	}

	if code := w.interrupt(t, syscall.SIGINT); code != 0 {
		t.Fatalf("ls -w after Ctrl-C exited %d, want 0; stderr %q", code, w.stderr)
	}
	if w.stderr.Len() != 0 {
		t.Errorf("ls -w wrote to stderr: %q", w.stderr)
	}
	events := map[string]int{}
	for _, text := range strings.Split(strings.TrimSuffix(w.out.String(), "\n"), "\n") {
		l := parseLine(t, text)
		if l.Life.Name != "Adam" || l.Time.IsZero() || l.Rev == 0 {
			t.Errorf("line %s: want Adam, a time and a revision", text)
		}
		events[l.Event]++
	}
	// A heartbeat is no change: 5 per second per member here, and none
	// printed. Each graceful handoff is one stopped (the moment between
	// the old holder's resign and the new one's write) and one moved.
	if events[registry.EventMoved] < handoffs || events[registry.EventStopped] > events[registry.EventMoved]+1 || events[registry.EventChanged] != 0 {
		t.Errorf("events = %v, want %d moved or more, about as many stopped, and no other change", events, handoffs)
	}
}

var textLine = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d) (\S+) (\S+) (\S+) (\S+) (\d+) (\d+)( .+)?$`)

// TestLsWatchText checks the text lines of ls -w: the table first, then
// one line per change, added, started, invalid and removed among them; and
// SIGTERM ends it with exit 0.
func TestLsWatchText(t *testing.T) {
	ep, etcd := server(t)
	ctx := context.Background()
	startMember(t, ep, "m1")
	w := startWatch(t, "ls", "-w", "--etcd-endpoints", ep)
	w.next(t, "the header", func(s string) bool { return strings.HasPrefix(s, "NAME") })

	type want struct{ event, name, state, holder string }
	expect := func(wn want) []string {
		t.Helper()
		ln := w.next(t, wn.event+" "+wn.name, func(s string) bool {
			m := textLine.FindStringSubmatch(s)
			return m != nil && m[2] == wn.event && m[3] == wn.name
		})
		m := textLine.FindStringSubmatch(ln.text)
		if m[4] != wn.state || m[5] != wn.holder {
			t.Fatalf("line %q, want %s %s %s %s", ln.text, wn.event, wn.name, wn.state, wn.holder)
		}
		return m
	}
	if _, err := etcd.Put(ctx, "/immortals/lives/Eve", ""); err != nil {
		t.Fatal(err)
	}
	expect(want{registry.EventAdded, "Eve", registry.StateWaiting, "-"})
	if m := expect(want{registry.EventStarted, "Eve", registry.StateRunning, "m1"}); m[6] != "1" {
		t.Fatalf("started line %q, want incarnation 1", m[0])
	}
	if _, err := etcd.Put(ctx, "/immortals/lives/Eve", `{"bogus":1}`); err != nil {
		t.Fatal(err)
	}
	if m := expect(want{registry.EventInvalid, "Eve", registry.StateInvalid, "-"}); !strings.Contains(m[8], "bogus") {
		t.Fatalf("invalid line %q, want the reason", m[0])
	}
	if _, err := etcd.Delete(ctx, "/immortals/lives/Eve"); err != nil {
		t.Fatal(err)
	}
	expect(want{registry.EventRemoved, "Eve", registry.StateInvalid, "-"})
	if code := w.interrupt(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("ls -w after SIGTERM exited %d, want 0; stderr %q", code, w.stderr)
	}
	t.Logf("ls -w printed:\n%s", w.out)
}

// TestGetAgeWatch checks that get-age -w prints the age about once a
// second while it grows, and ends with exit 1 and one line when the life
// is stopped.
func TestGetAgeWatch(t *testing.T) {
	ep, etcd := server(t)
	startMember(t, ep, "m1")
	if r := execute(t, "start", "Adam", "--etcd-endpoints", ep); r.code != 0 {
		t.Fatalf("start Adam = %+v", r)
	}
	w := startWatch(t, "get-age", "Adam", "-w", "--etcd-endpoints", ep)
	var ages []int64
	begin := time.Now()
	for len(ages) < 4 || ages[len(ages)-1] < 2 {
		ln := w.next(t, "an age", func(string) bool { return true })
		age, err := strconv.ParseInt(ln.text, 10, 64)
		if err != nil {
			t.Fatalf("get-age -w printed %q, want an age", ln.text)
		}
		if len(ages) > 0 && age < ages[len(ages)-1] {
			t.Fatalf("ages %v then %d: went back", ages, age)
		}
		ages = append(ages, age)
	}
	t.Logf("get-age -w: %v in %v", ages, time.Since(begin).Round(time.Millisecond))
	if _, err := etcd.Delete(context.Background(), "/immortals/lives/Adam"); err != nil {
		t.Fatal(err)
	}
	if code := w.wait(t, "the life's stop"); code != 1 || !strings.Contains(w.stderr.String(), "no such life") || strings.Count(w.stderr.String(), "\n") != 1 {
		t.Fatalf("get-age -w of a stopped life exited %d with %q, want 1 and one line", code, w.stderr)
	}
}

// TestLsWatchLostEtcd checks that ls -w gives up with exit 1 and one line
// once etcd is gone for lostAfter (5 s).
func TestLsWatchLostEtcd(t *testing.T) {
	srv, err := embedetcd.Start(embedetcd.Config{Dir: t.TempDir(), ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	var closing sync.Once
	stop := func() { closing.Do(srv.Close) }
	t.Cleanup(stop)
	w := startWatch(t, "ls", "-w", "--etcd-endpoints", srv.Endpoint())
	w.next(t, "the header", func(s string) bool { return strings.HasPrefix(s, "NAME") })
	gone := time.Now()
	stop()
	code := w.wait(t, "etcd's end")
	t.Logf("ls -w ended %v after etcd did: %q", time.Since(gone).Round(time.Millisecond), w.stderr)
	if code != 1 || strings.Count(w.stderr.String(), "\n") != 1 || !strings.Contains(w.stderr.String(), "lost etcd") || !strings.Contains(w.stderr.String(), "connection refused") {
		t.Fatalf("ls -w after etcd stopped exited %d with %q, want 1 and one line saying etcd is lost, and why", code, w.stderr)
	}
}
