package watchdog_test

import (
	"net"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
)

// Each test runs real `immortald run` processes (watchdog and member)
// against a real etcd. The TTL is long where a test shows the fast path, so
// that a takeover well under it cannot have come from the lease's expiry.

// twoMembers starts members a and b at ttl with n lives, and returns what
// a holds, its member record and its lease.
func twoMembers(t *testing.T, ttl time.Duration, n int) (*cluster, *node, map[string]registry.Status, registry.MemberRecord, clientv3.LeaseID) {
	t.Helper()
	c := newCluster(t)
	a := c.start("a", ttl, nil)
	c.start("b", ttl, nil)
	c.startLives(n, "a", "b")
	before := c.heldBy("a")
	if len(before) == 0 {
		t.Fatal("member a holds no life")
	}
	m, lease := c.waitMember("a")
	return c, a, before, m, lease
}

func TestMemberSIGKILLRevokesAtOnce(t *testing.T) {
	const ttl = 10 * time.Second
	c, a, before, m, lease := twoMembers(t, ttl, 12)
	if m.PID == a.cmd.Process.Pid {
		t.Fatalf("members/a has the watchdog's pid %d, want its member's", m.PID)
	}

	if err := syscall.Kill(m.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	took := c.waitMoved(before, ttl/2)
	t.Logf("%d lives ran elsewhere %s after the SIGKILL of the member (TTL %s)", len(before), took.Round(time.Millisecond), ttl)
	if !c.leaseGone(lease) {
		t.Errorf("the dead member's lease %x is still there", int64(lease))
	}
	if n := a.logCount("revoked the dead member's lease"); n != 1 {
		t.Errorf("watchdog logged %d revokes, want 1", n)
	}
	// The watchdog restarts the member, which joins again.
	m2, _ := c.waitMember("a", m.PID)
	if !processGone(m.PID) {
		t.Errorf("the killed member %d still runs", m.PID)
	}
	t.Logf("member restarted: pid %d, then %d", m.PID, m2.PID)
}

func TestWatchdogSIGKILLLeavesNoMember(t *testing.T) {
	const ttl = 3 * time.Second
	c, a, before, m, _ := twoMembers(t, ttl, 8)

	killed := time.Now()
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	c.eventually(5*time.Second, "the member dead with its watchdog", func() bool { return processGone(m.PID) })
	c.waitMoved(before, ttl+bound)
	took := time.Since(killed)
	t.Logf("%d lives ran elsewhere %s after the SIGKILL of the watchdog (TTL %s)", len(before), took.Round(time.Millisecond), ttl)
	// Nobody revoked it before its expiry: it expired at least 5/8 TTL
	// after the kill (a renewal goes every 3/8 TTL).
	if took < ttl/2 {
		t.Errorf("lives moved %s after the kill, before the lease could expire (TTL %s)", took, ttl)
	}
}

func TestMemberPanicIsRevoked(t *testing.T) {
	const ttl = 10 * time.Second
	c := newCluster(t)
	c.start("b", ttl, nil)
	c.startLives(8, "b")
	a := c.start("a", ttl, []string{"IMMORTALD_TEST_PANIC_AFTER=6s"}, "--restart-member=false")
	// a joins, and lives it is preferred for move to it by handoff.
	c.eventually(bound, "member a holding lives", func() bool { return len(c.heldBy("a")) > 0 })
	before := c.heldBy("a")
	_, lease := c.waitMember("a")

	if code := a.waitExit(t, bound); code != 1 {
		t.Errorf("watchdog exited %d after its member panicked, want 1 (--restart-member=false)", code)
	}
	if a.logCount("panic: IMMORTALD_TEST_PANIC_AFTER") != 1 {
		t.Errorf("the member did not panic")
	}
	if !c.leaseGone(lease) {
		t.Errorf("the panicked member's lease %x is still there when its watchdog exited", int64(lease))
	}
	c.waitMoved(before, ttl/2)
}

func TestMemberFailingAtStartBacksOff(t *testing.T) {
	c := newCluster(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	// Each member exits 1 at once: its HTTP address is taken.
	a := c.start("a", 2*time.Second, nil, "--http-addr", busy.Addr().String())
	time.Sleep(4 * time.Second)
	n := a.logCount("watchdog: member started")
	// Delays 250 ms, 500 ms, 1 s, 2 s: 4 or 5 starts in 4 s; a hot loop
	// would make hundreds.
	if n < 2 || n > 8 {
		t.Errorf("%d member starts in 4 s, want a few (2 to 8) under a doubling backoff", n)
	}
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := a.waitExit(t, bound); code == 0 {
		t.Errorf("watchdog exited 0 after its member kept failing, want non-zero")
	}

	b := c.start("b", 2*time.Second, nil, "--http-addr", busy.Addr().String(), "--restart-member=false")
	if code := b.waitExit(t, bound); code != 1 {
		t.Errorf("watchdog with --restart-member=false exited %d after its member failed, want 1", code)
	}
	if n := b.logCount("watchdog: member started"); n != 1 {
		t.Errorf("%d member starts with --restart-member=false, want 1", n)
	}
}

func TestSIGTERMHandsOffGracefully(t *testing.T) {
	const ttl = 10 * time.Second
	c, a, before, m, _ := twoMembers(t, ttl, 12)

	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := a.waitExit(t, bound); code != 0 {
		t.Errorf("watchdog exited %d after a SIGTERM, want 0", code)
	}
	if !processGone(m.PID) {
		t.Errorf("member %d still runs after its watchdog exited", m.PID)
	}
	c.waitMoved(before, ttl/2)
	if a.logCount("lives handed off") != 1 || a.logCount("member exited cleanly") != 1 {
		t.Errorf("no graceful handoff logged")
	}
	if n := a.logCount("revoked the dead member's lease") + a.logCount("member died"); n != 0 {
		t.Errorf("the watchdog treated a graceful stop as a death (%d lines)", n)
	}
}

func TestStoppedMemberIsNotRevoked(t *testing.T) {
	const ttl = 2 * time.Second
	c, a, before, m, lease := twoMembers(t, ttl, 8)

	if err := syscall.Kill(m.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			_ = syscall.Kill(m.PID, syscall.SIGCONT)
		}
	}()
	// Its peer takes over when the lease expires, not before.
	c.waitMoved(before, ttl+bound)
	time.Sleep(ttl) // well past the TTL
	if n := a.logCount("member died") + a.logCount("revoked"); n != 0 {
		t.Fatalf("the watchdog acted on a stopped member (%d lines)", n)
	}
	if processGone(m.PID) {
		t.Fatalf("the stopped member %d was killed", m.PID)
	}
	if err := syscall.Kill(m.PID, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	// It finds its session lost and opens a new one, in the same process.
	c.eventually(bound, "member a back on a new lease", func() bool {
		m2, l2, ok := c.member("a")
		return ok && m2.PID == m.PID && l2 != lease
	})
	if a.logCount("session lost") == 0 {
		t.Errorf("the member did not notice its lost session")
	}
	if n := a.logCount("member died"); n != 0 {
		t.Errorf("the watchdog saw a death (%d lines)", n)
	}
}
