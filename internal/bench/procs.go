package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
// It is 100 on every Linux this runs on (getconf CLK_TCK).
const clockTicks = 100

// proc is a child process the bench started, in its own process group.
type proc struct {
	name     string
	pid      int
	cmd      *exec.Cmd
	started  time.Time
	done     chan struct{} // closed when the process has exited
	exitedAt time.Time     // valid once done is closed
	waitErr  error         // valid once done is closed
}

// signal sends sig to the process itself.
func (p *proc) signal(sig syscall.Signal) error { return syscall.Kill(p.pid, sig) }

// killGroup sends SIGKILL to the process's whole group (it and whatever it
// started).
func (p *proc) killGroup() { _ = syscall.Kill(-p.pid, syscall.SIGKILL) }

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits up to d for the process to exit.
func (p *proc) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}

// procSet tracks every process the bench started, so that all of them (and
// their process groups) can be killed on exit or Ctrl-C.
type procSet struct {
	mu     sync.Mutex
	live   map[int]*proc
	closed bool
}

func newProcSet() *procSet { return &procSet{live: make(map[int]*proc)} }

// start starts argv in a new process group. stdout and stderr may be nil
// (/dev/null). The process gets SIGKILL if the bench itself dies.
func (ps *procSet) start(name string, stdout, stderr *os.File, argv ...string) (*proc, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	if stdout != nil {
		cmd.Stdout = stdout
	}
	if stderr != nil {
		cmd.Stderr = stderr
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	ps.mu.Lock()
	if ps.closed {
		ps.mu.Unlock()
		return nil, errors.New("shutting down")
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		ps.mu.Unlock()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.pid = cmd.Process.Pid
	ps.live[p.pid] = p
	ps.mu.Unlock()
	go func() {
		err := cmd.Wait()
		p.exitedAt = time.Now()
		p.waitErr = err
		ps.mu.Lock()
		delete(ps.live, p.pid)
		ps.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// killAll kills every live process group and waits a bounded time for them
// to be reaped. No process can be started afterwards.
func (ps *procSet) killAll() {
	ps.mu.Lock()
	ps.closed = true
	all := make([]*proc, 0, len(ps.live))
	for _, p := range ps.live {
		all = append(all, p)
	}
	ps.mu.Unlock()
	for _, p := range all {
		p.killGroup()
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range all {
		if !p.wait(time.Until(deadline)) {
			fmt.Fprintf(os.Stderr, "immortalbench: %s (pid %d) did not exit after SIGKILL\n", p.name, p.pid)
		}
	}
}

// procMem is what /proc/<pid>/status says about a process's memory.
type procMem struct {
	RSS  int64 // VmRSS, bytes
	Anon int64 // RssAnon, bytes
}

// readProcMem reads VmRSS and RssAnon of pid.
func readProcMem(pid int) (procMem, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procMem{}, err
	}
	var m procMem
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(line, "VmRSS:"):
			m.RSS = kbField(line)
		case strings.HasPrefix(line, "RssAnon:"):
			m.Anon = kbField(line)
		}
	}
	return m, nil
}

// readPSS reads the proportional set size of pid from smaps_rollup: shared
// pages (the binary's text) count once across the processes that share them.
func readPSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Pss:") {
			return kbField(line), nil
		}
	}
	return 0, errors.New("no Pss line")
}

// kbField parses "Name:   1234 kB" into bytes.
func kbField(line string) int64 {
	f := strings.Fields(line)
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.ParseInt(f[1], 10, 64)
	return n * 1024
}

// readCPU returns utime+stime of pid in seconds.
func readCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

// parseStatCPU extracts utime+stime (fields 14 and 15) from a
// /proc/<pid>/stat line; the command name in parentheses may hold spaces.
func parseStatCPU(s string) (float64, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, errors.New("short stat")
	}
	u, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed stat times")
	}
	return (u + st) / clockTicks, nil
}

// children returns the pids of pid's direct children.
func children(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// meminfo returns a field of /proc/meminfo in bytes.
func meminfo(field string) int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			return kbField(line)
		}
	}
	return 0
}

// cpuModel returns the first "model name" of /proc/cpuinfo.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// portPicker hands out free loopback ports, never the same one twice.
type portPicker struct {
	mu   sync.Mutex
	used map[int]bool
}

func (pp *portPicker) pick() (int, error) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.used == nil {
		pp.used = make(map[int]bool)
	}
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		_ = ln.Close()
		if !pp.used[port] {
			pp.used[port] = true
			return port, nil
		}
	}
	return 0, errors.New("no free port")
}

// scrapeMetrics reads the unlabelled samples of a Prometheus text endpoint.
func scrapeMetrics(url string) (map[string]float64, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return parseMetrics(resp.Body)
}

func parseMetrics(r interface{ Read([]byte) (int, error) }) (map[string]float64, error) {
	out := make(map[string]float64)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] == '#' || bytes.IndexByte(line, '{') >= 0 {
			continue
		}
		f := strings.Fields(string(line))
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		out[f[0]] = v
	}
	return out, sc.Err()
}

// processGone waits up to d for pid to be gone (or a zombie: it runs no
// code) and reports whether it is.
func processGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 && strings.HasPrefix(strings.TrimSpace(string(b[i+1:])), "Z") {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// tree is a member's processes: its watchdog (`immortald run`) and the
// watchdog's children (the member).
func tree(pid int) []int { return append([]int{pid}, children(pid)...) }

// treeSum sums read over a member's processes. The watchdog's reading
// must succeed; a member between restarts is skipped.
func treeSum[T int64 | float64](pid int, read func(int) (T, error)) (T, error) {
	var sum T
	for i, p := range tree(pid) {
		v, err := read(p)
		if err != nil {
			if i == 0 {
				return 0, err
			}
			continue
		}
		sum += v
	}
	return sum, nil
}

// treeRSS, treePSS and treeCPU are readProcMem's RSS, readPSS and readCPU
// of a member's processes, summed.
func treeRSS(pid int) (int64, error) {
	return treeSum(pid, func(p int) (int64, error) { m, err := readProcMem(p); return m.RSS, err })
}
func treePSS(pid int) (int64, error)   { return treeSum(pid, readPSS) }
func treeCPU(pid int) (float64, error) { return treeSum(pid, readCPU) }
