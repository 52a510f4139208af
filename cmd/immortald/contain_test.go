package main_test

import (
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"

	"github.com/immortald/immortald/supervisor/engine"
)

// lifeProcs returns the live (not zombie) processes of every hold of life
// name on this machine, by fencing token, read from /proc: each carries
// IMMORTALD_LIFE and IMMORTALD_FENCING_TOKEN in its environment.
func lifeProcs(t *testing.T, name string) map[int64][]int {
	t.Helper()
	all, err := procfs.AllProcs()
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64][]int{}
	for _, p := range all {
		if st, err := p.Stat(); err != nil || st.State == "Z" {
			continue
		}
		env, err := p.Environ()
		if err != nil || !slices.Contains(env, "IMMORTALD_LIFE="+name) {
			continue
		}
		for _, kv := range env {
			if v, ok := strings.CutPrefix(kv, "IMMORTALD_FENCING_TOKEN="); ok {
				if tok, err := strconv.ParseInt(v, 10, 64); err == nil {
					out[tok] = append(out[tok], p.PID)
				}
			}
		}
	}
	return out
}

// nextHold waits for a hold of life name with a token above after whose
// three processes (the forker kind's) run, and fails the test unless by
// then no process of another hold is left. It returns the hold's token.
func nextHold(t *testing.T, name string, after int64) int64 {
	t.Helper()
	for start := time.Now(); time.Since(start) < bound; time.Sleep(20 * time.Millisecond) {
		holds := lifeProcs(t, name)
		for tok, pids := range holds {
			if tok <= after || len(pids) < 3 {
				continue
			}
			delete(holds, tok)
			if len(holds) > 0 {
				t.Fatalf("hold %d runs %v while processes of other holds still run: %v", tok, pids, holds)
			}
			return tok
		}
	}
	t.Fatalf("no hold of the life after token %d ran its three processes within %s", after, bound)
	return 0
}

// forkerKind is a config declaring the kind forker: a child that starts a
// grandchild in a session of its own and a daemon that forks twice, and
// then waits.
const forkerKind = "kinds:\n  forker:\n    command: [\"/bin/sh\", \"-c\", \"setsid sleep 1000 & (sleep 1000 &); while :; do sleep 0.1; done\"]\n    stop_grace: 2s\n"

// killLifeProcs is a cleanup: it kills what a failed run left of life name.
func killLifeProcs(t *testing.T, name string) {
	for _, pids := range lifeProcs(t, name) {
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// A command life whose child starts a grandchild in a session of its own
// (setsid) and a daemon that forks twice leaves nothing running when it
// moves: after a SIGTERM of its member (a handoff) and after a SIGKILL of
// its member process (the watchdog clears up), no process of the old hold
// runs once the new holder's child does. Real `immortald run` processes.
func TestCommandLifeLeavesNothingBehind(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("setsid (util-linux) is not installed")
	}
	// A name that m1 keeps until its SIGTERM, and that m2 keeps when m3
	// joins: each move is the one the test makes.
	name := ""
	for i := 0; name == ""; i++ {
		n := fmt.Sprintf("forked-%d", i)
		if engine.Candidates(n, []string{"m1", "m2"}, 2)[0] == "m1" && engine.Candidates(n, []string{"m2", "m3"}, 2)[0] == "m2" {
			name = n
		}
	}
	c := newKindCluster(t, t.TempDir(), forkerKind, "2s", "200ms")
	t.Cleanup(func() { killLifeProcs(t, name) })
	member, cli, waitFor := c.member, c.cli, c.waitFor
	m1 := member("m1")
	cli("start", name, "--kind", "forker")
	t1 := nextHold(t, name, 0)
	member("m2")
	waitFor("m2 registered", func() bool { return strings.Contains(cli("members"), "m2") })

	// A graceful handoff: SIGTERM of the holder.
	m1.signal(syscall.SIGTERM)
	t2 := nextHold(t, name, t1)
	if code := m1.wait(t); code != 0 {
		t.Fatalf("m1 exited %d after SIGTERM: %s", code, m1.stderr.String())
	}

	// The member process of the new holder SIGKILLed: its watchdog kills
	// everything it left before revoking the lease.
	member("m3")
	waitFor("m3 registered", func() bool { return strings.Contains(cli("members"), "m3") })
	if err := syscall.Kill(c.memberPID("m2"), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t3 := nextHold(t, name, t2)
	t.Logf("tokens %d, %d, %d: no process of an earlier hold outlived it", t1, t2, t3)
	cli("stop", name)
	waitFor("every process of the life to go after stop", func() bool { return len(lifeProcs(t, name)) == 0 })
}

// A member process that is stopped (SIGSTOP) cannot stop its lives' work at
// its safe deadline, and a command's processes keep running while their
// member is stopped: its watchdog kills it past that deadline, before its
// lease can expire, so no process of its hold runs once a peer's does.
func TestStoppedMemberLeavesNoWorkRunning(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("setsid (util-linux) is not installed")
	}
	name := ""
	for i := 0; name == ""; i++ {
		if n := fmt.Sprintf("stopped-%d", i); engine.Candidates(n, []string{"m1", "m2"}, 2)[0] == "m1" {
			name = n
		}
	}
	c := newKindCluster(t, t.TempDir(), forkerKind, "2s", "200ms")
	t.Cleanup(func() { killLifeProcs(t, name) })
	m1 := c.member("m1")
	c.cli("start", name, "--kind", "forker")
	t1 := nextHold(t, name, 0)
	c.member("m2")
	c.waitFor("m2 registered", func() bool { return strings.Contains(c.cli("members"), "m2") })
	pid := c.memberPID("m1")
	t0 := time.Now()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t2 := nextHold(t, name, t1)
	t.Logf("the life ran on m2 (token %d) %s after m1's member process was stopped; none of m1's hold (token %d) was left",
		t2, time.Since(t0).Round(time.Millisecond), t1)
	c.waitFor("the watchdog's line", func() bool { return strings.Contains(m1.stderr.String(), "killing it") })
}
