//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// runID tells this test process's containers and networks from those of any
// other run on the same engine, so concurrent runs cannot collide.
var runID = func() string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}()

// cmdResult is what one external command did.
type cmdResult struct {
	Stdout, Stderr string
	Code           int
}

// run executes name args and returns its output. err is non-nil when the
// command could not start, timed out or exited non-zero; it then names the
// command and carries its stderr.
func run(ctx context.Context, name string, args ...string) (cmdResult, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	res := cmdResult{Stdout: stdout.String(), Stderr: stderr.String()}
	if cmd.ProcessState != nil {
		res.Code = cmd.ProcessState.ExitCode()
	}
	if err != nil {
		return res, fmt.Errorf("%s %s: %w: %s", name, shellJoin(args), err, strings.TrimSpace(res.Stderr))
	}
	return res, nil
}

// runT is run with a timeout, failing the test on error.
func runT(t testing.TB, timeout time.Duration, name string, args ...string) cmdResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	res, err := run(ctx, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

// poll calls f every interval until it reports done, returns an error, or
// timeout passes. It returns nil when done, else the last error or a timeout
// error that includes the last status f gave.
func poll(timeout, interval time.Duration, what string, f func() (done bool, status string, err error)) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		done, status, err := f()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if done {
			return nil
		}
		last = status
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not done after %v (last: %s)", what, timeout, last)
		}
		time.Sleep(interval)
	}
}

// waitFor is poll failing the test.
func waitFor(t testing.TB, timeout time.Duration, what string, f func() (bool, string)) {
	t.Helper()
	err := poll(timeout, 100*time.Millisecond, what, func() (bool, string, error) {
		ok, st := f()
		return ok, st, nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

var unsafeChars = regexp.MustCompile(`[^a-zA-Z0-9_.-]+`)

// safeName turns a test name into something usable in file and container names.
func safeName(s string) string {
	return strings.Trim(unsafeChars.ReplaceAllString(s, "_"), "_.-")
}

// logsDir is where a test's logs go when it fails: e2e/logs/<test>/.
func logsDir(t testing.TB) string {
	return filepath.Join("logs", safeName(t.Name()))
}

// keepLogs reports whether a test's logs should be saved.
func keepLogs(t testing.TB) bool {
	return t.Failed() || os.Getenv("IMMORTALD_E2E_LOGS") != ""
}

// writeLog saves one log file under the test's logs directory.
func writeLog(t testing.TB, name, content string) {
	dir := logsDir(t)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("cannot save logs: %v", err)
		return
	}
	path := filepath.Join(dir, safeName(name)+".log")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Logf("cannot save logs: %v", err)
	}
}

// report logs one greppable line of measurements:
//
//	E2E scenario=kill lives=50 failover_ms=2345 age_loss_ms=870
func report(t testing.TB, scenario string, kv ...any) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "E2E scenario=%s", scenario)
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(&b, " %v=%v", kv[i], kv[i+1])
	}
	t.Log(b.String())
}

// stats summarizes a set of millisecond measurements.
type stats struct {
	N             int
	Min, Max, Avg int64
	P50           int64
}

func summarize(xs []int64) stats {
	if len(xs) == 0 {
		return stats{}
	}
	s := append([]int64(nil), xs...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	var sum int64
	for _, x := range s {
		sum += x
	}
	return stats{N: len(s), Min: s[0], Max: s[len(s)-1], Avg: sum / int64(len(s)), P50: s[len(s)/2]}
}

// ms is a duration in whole milliseconds, for reports.
func ms(d time.Duration) int64 { return d.Milliseconds() }
