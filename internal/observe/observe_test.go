package observe

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	// The command name may hold spaces and parentheses.
	line := "1234 (im (mortal) d) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0 100 1000 200 18446744073709551615"
	got, err := parseStatCPU(line)
	if err != nil {
		t.Fatal(err)
	}
	if got != 3.0 {
		t.Errorf("cpu = %v s, want 3 (300 ticks)", got)
	}
	if _, err := parseStatCPU("garbage"); err == nil {
		t.Error("no error for a malformed line")
	}
}

func TestKBField(t *testing.T) {
	if got := kbField("VmRSS:	   20084 kB"); got != 20084*1024 {
		t.Errorf("kbField = %d, want %d", got, 20084*1024)
	}
}

func TestChildren(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if got := Children(os.Getpid()); !slices.Contains(got, cmd.Process.Pid) {
		t.Errorf("Children(self) = %v, want it to hold %d", got, cmd.Process.Pid)
	}
	if got := Children(cmd.Process.Pid); len(got) != 0 {
		t.Errorf("Children(sleep) = %v, want none", got)
	}
	if Gone(cmd.Process.Pid, 0) {
		t.Error("Gone reports a running process gone")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if !Gone(cmd.Process.Pid, time.Second) {
		t.Error("Gone reports a reaped process still there")
	}
}

func TestParseMetrics(t *testing.T) {
	in := `# HELP etcd_mvcc_txn_total x
# TYPE etcd_mvcc_txn_total counter
etcd_mvcc_txn_total 1.234e+06
etcd_server_proposals_committed_total 42
etcd_disk_wal_fsync_duration_seconds_bucket{le="0.001"} 5
`
	m, err := ParseMetrics(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if m["etcd_mvcc_txn_total"] != 1234000 || m["etcd_server_proposals_committed_total"] != 42 {
		t.Errorf("parsed %v", m)
	}
	if len(m) != 2 {
		t.Errorf("labelled samples must be skipped: %v", m)
	}
}

func TestReadsOfThisProcessAndMachine(t *testing.T) {
	self := os.Getpid()
	if m, err := ReadMem(self); err != nil || m.RSS <= 0 || m.Anon <= 0 {
		t.Errorf("ReadMem(self) = %+v, %v", m, err)
	}
	if p, err := PSS(self); err != nil || p <= 0 {
		t.Errorf("PSS(self) = %d, %v", p, err)
	}
	if _, err := CPU(self); err != nil {
		t.Errorf("CPU(self): %v", err)
	}
	if MemInfo("MemTotal") <= 0 {
		t.Error("MemInfo(MemTotal) is not positive")
	}
	if f := strings.Fields(LoadAvg()); len(f) != 3 {
		t.Errorf("LoadAvg() = %q, want three figures", LoadAvg())
	}
}
