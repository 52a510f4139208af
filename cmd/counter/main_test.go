package main

import (
	"bytes"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/immortald/immortald/workload/execkind/childapi"
)

func TestMain(m *testing.M) {
	if os.Getenv("COUNTER_TEST_AS_COUNTER") != "" {
		main()
		return
	}
	os.Exit(m.Run())
}

// counter starts the test binary as the counter in a state dir.
func counter(t *testing.T, dir string, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"--interval", "20ms"}, args...)...)
	cmd.Env = append(os.Environ(), "COUNTER_TEST_AS_COUNTER=1", "IMMORTALD_STATE_DIR="+dir,
		"IMMORTALD_FENCING_TOKEN=42", "COUNTER_LOG="+filepath.Join(dir, "log"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd, &stderr
}

// It counts on from the restored state, logs token and n, and writes its
// state on SIGTERM before exiting 0.
func TestCountsFromStateAndStopsOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "state"), []byte("41\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd, stderr := counter(t, dir)
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b, _ := os.ReadFile(filepath.Join(dir, "log")); strings.Count(string(b), "\n") >= 3 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("fewer than 3 log lines; stderr: %s", stderr)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("counter after SIGTERM: %v; stderr: %s", err, stderr)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "log"))
	lines := strings.Split(strings.TrimSpace(string(log)), "\n")
	var last int64
	for i, l := range lines {
		f := strings.Fields(l)
		if len(f) != 3 || f[0] != "42" {
			t.Fatalf("log line %q: want \"42 n unix-ms\"", l)
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		if ms, err := strconv.ParseInt(f[2], 10, 64); err != nil || ms < time.Now().Add(-time.Hour).UnixMilli() {
			t.Fatalf("log line %q: bad time", l)
		}
		if n != int64(42+i) {
			t.Fatalf("log line %d is n=%d, want %d", i, n, 42+i)
		}
		last = n
	}
	st, _ := os.ReadFile(filepath.Join(dir, "state"))
	if got := strings.TrimSpace(string(st)); got != strconv.FormatInt(last, 10) {
		t.Fatalf("state %q after SIGTERM, want the last n %d", got, last)
	}
	if ents, _ := filepath.Glob(filepath.Join(dir, ".state-*")); len(ents) != 0 {
		t.Errorf("temporary files left: %v", ents)
	}
}

// A state that is not a count is refused and left as it is.
func TestBadStateIsKept(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "state")
	if err := os.WriteFile(file, []byte("not a number"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd, stderr := counter(t, dir)
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("counter with a bad state: %v, want exit 1", err)
	}
	if !strings.Contains(stderr.String(), "not a count") {
		t.Errorf("stderr %q does not say why", stderr)
	}
	if b, _ := os.ReadFile(file); string(b) != "not a number" {
		t.Errorf("the bad state was overwritten: %q", b)
	}
}

// --pad fills the state file to its size and is ignored when read back;
// --log-dir logs to one file per life.
func TestPadAndLogDir(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "state")
	pad := "." + strings.Repeat(".", 100) + "\n"
	if err := os.WriteFile(file, []byte("7\n"+pad), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := t.TempDir()
	cmd := exec.Command(os.Args[0], "--interval", "20ms", "--pad", "4KiB", "--log-dir", logs)
	cmd.Env = append(os.Environ(), "COUNTER_TEST_AS_COUNTER=1", "IMMORTALD_STATE_DIR="+dir,
		"IMMORTALD_FENCING_TOKEN=9", "IMMORTALD_LIFE=job-1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	logFile := filepath.Join(logs, "job-1.log")
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b, _ := os.ReadFile(logFile); strings.Count(string(b), "\n") >= 2 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("fewer than 2 lines in %s; stderr: %s", logFile, stderr.String())
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("counter after SIGTERM: %v; stderr: %s", err, stderr.String())
	}
	b, _ := os.ReadFile(logFile)
	if !strings.HasPrefix(string(b), "9 8 ") {
		t.Errorf("log %q: want it to start at n 8 under token 9", b)
	}
	st, _ := os.ReadFile(file)
	if len(st) != 4096 {
		t.Errorf("state file of %d bytes, want 4096", len(st))
	}
	first, rest, _ := strings.Cut(string(st), "\n")
	if n, err := strconv.Atoi(first); err != nil || n < 9 || strings.Trim(rest, ".\n") != "" {
		t.Errorf("state file starts %.20q: want n >= 9, then dots", st)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int{"0": 0, "100": 100, "64KiB": 64 << 10, "1MiB": 1 << 20, "2K": 2048, "5B": 5} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "1GiB", "1.5KiB"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q): no error", in)
		}
	}
}

// With --sync, each write is checkpointed through the socket before it is
// logged, a failure that is safe to retry is retried, and a fenced
// checkpoint stops the counter with exit 0.
func TestSyncCheckpointsEveryWrite(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var calls []string // the state file at each call
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, _ := os.ReadFile(filepath.Join(dir, "state"))
		mu.Lock()
		defer mu.Unlock()
		if r.Method != http.MethodPost || r.URL.Path != childapi.PathCheckpoint || r.Header.Get(childapi.HeaderFencingToken) != "42" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		calls = append(calls, strings.TrimSpace(string(st)))
		switch len(calls) {
		case 2:
			w.WriteHeader(http.StatusServiceUnavailable) // retried
		case 5:
			w.WriteHeader(http.StatusConflict)
		default:
			_, _ = w.Write([]byte(`{"bytes":2,"fencing_token":42}`))
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	t.Setenv(childapi.EnvCheckpointSocket, sock)
	cmd, stderr := counter(t, dir, "--sync")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("counter --sync after a fenced checkpoint: %v, want exit 0; stderr: %s", err, stderr)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"1", "2", "2", "3", "4"}; strings.Join(calls, " ") != strings.Join(want, " ") {
		t.Fatalf("checkpoints of the states %q, want %q", calls, want)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "log"))
	var ns []string
	for _, l := range strings.Split(strings.TrimSpace(string(log)), "\n") {
		if f := strings.Fields(l); len(f) == 3 {
			ns = append(ns, f[1])
		}
	}
	if got := strings.Join(ns, " "); got != "1 2 3" {
		t.Fatalf("logged counts %q, want 1 2 3: the ones checkpointed before the fence", got)
	}
	if !strings.Contains(stderr.String(), "retrying") || !strings.Contains(stderr.String(), "stopping") {
		t.Errorf("stderr %q does not tell of the retry and the stop", stderr)
	}
}
