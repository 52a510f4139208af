package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// child is one process of a command life that the sampler saw: a process
// whose program is the life's (cmd/counter), with the life and the fencing
// token from its environment.
type child struct {
	pid    int
	life   string
	token  int64
	member string // the member that started it (its parent's id), "" if unknown
	seen   time.Time
	gone   time.Time // zero while it runs
}

// childSampler scans /proc every tick for the processes of one program and
// keeps, per life, every child seen. It counts duplicates: a moment at
// which two children of one life run at once. It reads every process's
// command line, which on a machine of a few hundred processes is cheap.
type childSampler struct {
	b    *bench
	prog string
	tick time.Duration

	mu         sync.Mutex
	byPID      map[int]*child
	byLife     map[string][]*child
	live       map[string]int // children of each life that run now
	duplicates []string       // one entry per life and moment it had two
	notify     chan struct{}
	scans      int
}

func (b *bench) startChildSampler(ctx context.Context, prog string, tick time.Duration) *childSampler {
	s := &childSampler{b: b, prog: prog, tick: tick, byPID: map[int]*child{}, byLife: map[string][]*child{},
		live: map[string]int{}, notify: make(chan struct{})}
	go func() {
		t := time.NewTicker(tick)
		defer t.Stop()
		for {
			s.scan()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// scan reads /proc once.
func (s *childSampler) scan() {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	now := time.Now()
	running := map[int]bool{}
	var fresh []*child
	s.mu.Lock()
	known := s.byPID
	s.mu.Unlock()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(cmd) == 0 { // gone, or a zombie: it runs no code
			continue
		}
		prog, _, _ := bytes.Cut(cmd, []byte{0})
		if string(prog) != s.prog {
			continue
		}
		running[pid] = true
		s.mu.Lock()
		_, ok := known[pid]
		s.mu.Unlock()
		if ok {
			continue
		}
		c := &child{pid: pid, seen: now}
		env, _ := os.ReadFile("/proc/" + e.Name() + "/environ")
		for _, kv := range bytes.Split(env, []byte{0}) {
			k, v, _ := strings.Cut(string(kv), "=")
			switch k {
			case "IMMORTALD_LIFE":
				c.life = v
			case "IMMORTALD_FENCING_TOKEN":
				c.token, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		if c.life == "" {
			continue // not started by a member: ignore it
		}
		c.member = s.b.memberOf(parentOf(pid))
		fresh = append(fresh, c)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scans++
	changed := len(fresh) > 0
	for pid, c := range s.byPID {
		if c.gone.IsZero() && !running[pid] {
			c.gone = now
			s.live[c.life]--
			changed = true
		}
	}
	for _, c := range fresh {
		s.byPID[c.pid] = c
		s.byLife[c.life] = append(s.byLife[c.life], c)
		s.live[c.life]++
		if s.live[c.life] == 2 {
			var who []string
			for _, o := range s.byLife[c.life] {
				if o.gone.IsZero() {
					who = append(who, fmt.Sprintf("pid %d token %d on %s", o.pid, o.token, o.member))
				}
			}
			s.duplicates = append(s.duplicates, fmt.Sprintf("%s at %s: %s", c.life, now.Format("15:04:05.000"), strings.Join(who, ", ")))
		}
	}
	if changed {
		close(s.notify)
		s.notify = make(chan struct{})
	}
}

// runningLocked returns the children of life that run now.
func (s *childSampler) runningLocked(life string) []*child {
	var out []*child
	for _, c := range s.byLife[life] {
		if c.gone.IsZero() {
			out = append(out, c)
		}
	}
	return out
}

// waitUntil waits until cond (called with s.mu held) is true; it checks at
// every change the scans see, and every 50 ms (cond may depend on time).
func (s *childSampler) waitUntil(ctx context.Context, timeout time.Duration, cond func() bool) error {
	return waitNotified(ctx, timeout, 50*time.Millisecond, func() (bool, <-chan struct{}, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		return cond(), s.notify, nil
	})
}

// parentOf returns the parent pid of pid, 0 if it cannot be read.
func parentOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// memberOf returns the id of the member whose member process (the child of
// its watchdog, `immortald run`) is pid, or "".
func (b *bench) memberOf(pid int) string {
	if pid <= 0 {
		return ""
	}
	w := parentOf(pid)
	for _, m := range b.alive() {
		if m.p.pid == w || m.p.pid == pid {
			return m.id
		}
	}
	return ""
}
