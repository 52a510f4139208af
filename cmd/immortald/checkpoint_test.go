package main_test

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// A command life whose child checkpoints synchronously (the shell example,
// calling `immortald checkpoint`) loses nothing when its member process is
// SIGKILLed the moment a checkpoint returned: the next holder restores
// exactly that state. The periodic copy runs every 2s, far from the kill.
func TestSyncCheckpointEndToEnd(t *testing.T) {
	dir := t.TempDir()
	script, err := filepath.Abs("../../examples/shell-counter/counter.sh")
	if err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "counter.log")
	const countTo = 40
	c := newKindCluster(t, dir, fmt.Sprintf(`kinds:
  shcounter:
    command: [%q]
    env: {PATH: %q, EVERY: "5", INTERVAL: "0.1", COUNT_TO: "%d", COUNTER_LOG: %q}
    stop_grace: 2s
`, script, filepath.Dir(immortald)+":/usr/bin:/bin", countTo, log), "4s", "2s")
	c.member("m1")
	c.member("m2")
	c.waitFor("both members registered", func() bool {
		m := c.cli("members")
		return strings.Contains(m, "m1") && strings.Contains(m, "m2")
	})
	c.cli("start", "job", "--kind", "shcounter")

	// lines returns the log's "start TOKEN N" or "checkpointed TOKEN N"
	// lines as [token, n].
	lines := func(what string) [][2]int64 {
		f, err := os.Open(log)
		if err != nil {
			return nil
		}
		defer f.Close()
		var out [][2]int64
		for sc := bufio.NewScanner(f); sc.Scan(); {
			w := strings.Fields(sc.Text())
			if len(w) != 3 || w[0] != what {
				continue
			}
			tok, err1 := strconv.ParseInt(w[1], 10, 64)
			n, err2 := strconv.ParseInt(w[2], 10, 64)
			if err1 != nil || err2 != nil {
				t.Fatalf("log line %q", sc.Text())
			}
			out = append(out, [2]int64{tok, n})
		}
		return out
	}
	c.waitFor("a first synchronous checkpoint", func() bool { return len(lines("checkpointed")) > 0 })
	var holder lifeState
	c.waitFor("the holder in the state record", func() bool {
		st, ok := c.stateOf("job")
		holder = st
		return ok && st.Holder != ""
	})
	pid := c.memberPID(holder.Holder)
	if pid == 0 {
		t.Fatalf("no pid of the holder %s", holder.Holder)
	}
	c.waitFor(fmt.Sprintf("the checkpoint of %d", countTo), func() bool {
		l := lines("checkpointed")
		return len(l) > 0 && l[len(l)-1][1] == countTo
	})
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ck := lines("checkpointed")
	t1 := ck[len(ck)-1][0]
	for _, l := range ck {
		if l[0] != t1 {
			t.Fatalf("checkpoints of two tokens before the kill: %v", ck)
		}
	}
	if holder.Token != t1 {
		t.Fatalf("the state record's token %d is not the child's %d", holder.Token, t1)
	}
	var next [2]int64
	c.waitFor("the next holder's child", func() bool {
		for _, l := range lines("start") {
			if l[0] > t1 {
				next = l
				return true
			}
		}
		return false
	})
	if next[1] != countTo {
		t.Fatalf("the next holder (token %d) restored %d, want %d: the state of the checkpoint that returned before the kill", next[0], next[1], countTo)
	}
	if st, ok := c.stateOf("job"); !ok || strings.TrimSpace(string(st.Data)) != strconv.Itoa(countTo) {
		t.Fatalf("get-state after the handoff: %q (ok %v), want %d", st.Data, ok, countTo)
	}
	c.cli("stop", "job")
}
