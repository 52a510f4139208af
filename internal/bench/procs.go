package bench

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

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
