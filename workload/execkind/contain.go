package execkind

// Containment: every process a life's child starts dies with the child,
// wherever it went (a grandchild, one that called setsid, a daemon that
// forked twice).
//
// The member process is a child subreaper (PR_SET_CHILD_SUBREAPER) from
// its first command kind on, so an orphan of a life's tree becomes the
// member's child instead of init's (or the watchdog's). Each hold's tree is
// found by reading the member's subtree in /proc (github.com/prometheus/procfs
// and the children files): the child and its
// descendants, the processes of its process group, and the member's
// adopted orphans that belong to the hold: seen in its tree by an earlier
// scan, or carrying its IMMORTALD_LIFE and IMMORTALD_FENCING_TOKEN in their
// environment (inherited from the child), with their descendants. When the
// child exits (on its own, on a stop, at the deadline) every process of
// the tree is SIGKILLed, through a pidfd checked against the start time
// read, so a reused pid is never signalled; the member reaps the orphans it
// adopted. A scan every second refreshes each tree and kills adopted
// orphans tagged with a hold that no longer runs here.
//
// When the member process itself dies, its children, and so every process
// of every tree, become the watchdog's (itself a subreaper), which kills
// them all before it revokes the lease (package watchdog).
//
// Not found: a process that clears its environment and leaves the tree
// (its parent exits) between two scans, as it then carries nothing that
// names its life. A member's own children that are not lives' are never
// touched: only processes attributed to a hold are signalled or reaped.

import (
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"

	"github.com/immortald/immortald/internal/observe"
)

// scanEvery is the period of the scan that refreshes the trees of holds
// with a child and kills the escaped processes of ended holds.
const scanEvery = time.Second

// KillBound is how long the member tries to kill every process of a
// child's tree after the child exited before it logs that some are left.
const KillBound = 5 * time.Second

// tracker is the member process's view of its lives' process trees.
type tracker struct {
	mu sync.Mutex
	// forkMu is held for reading while a Runner forks a child and records
	// it as direct, and for writing while zombies are reaped, so that no
	// reap takes a child that os/exec must reap. Lock order: forkMu, then
	// mu.
	forkMu sync.RWMutex
	nholds atomic.Int64 // len(holds), read without mu (Holds)
	// reapAll: this process starts no children but its lives' (ReapOrphans):
	// every adopted zombie is reaped, seen alive or not.
	reapAll bool
	self    int
	fs      procfs.FS
	err     error            // why trees cannot be tracked (no /proc), if so
	holds   map[*tree]bool   // registered holds
	reaps   []*proc          // zombies of ours to reap (reapQueued)
	direct  map[int]*tree    // children started by Runners (os/exec reaps them), by the hold
	ours    map[procID]*tree // processes attributed to a hold, nil once it ended
	// begun are the holds registered here (zero time) or ended within
	// forgetAfter (when), by life name and fencing token: an adopted orphan
	// tagged with an ended one escaped its kill; one tagged with a hold
	// this member never ran is not a life's of this member.
	begun    map[[2]string]time.Time
	stopScan chan struct{} // ends the scan goroutine; nil when none runs
	log      *slog.Logger

	// cgroups (cgroup.go): the directory of this member's cgroups while a
	// hold is registered, "" when none or off; cgOff says why they are off
	// for good.
	cgBase string
	cgOff  error
}

// procs is the one tracker of this process.
var procs = &tracker{holds: map[*tree]bool{}, direct: map[int]*tree{}, ours: map[procID]*tree{}, begun: map[[2]string]time.Time{}}

// ReapOrphans says that this process starts no child processes of its own
// beside its command lives' children (the immortald binary's member): the
// scan (every second) then reaps every zombie child that no Runner started,
// also an orphan of a life that died before any look saw it alive, which
// would otherwise stay a zombie until the member exits. A program that
// embeds a member and starts processes of its own must not call it: their
// exit statuses would be taken from it.
func ReapOrphans() {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	procs.reapAll = true
}

// Holds reports how many holds of command lives this process runs now:
// each has a child, or is about to start or has just stopped one. While
// there is none, no process of a life runs here.
func Holds() int { return int(procs.nholds.Load()) }

// procID names a process across pid reuse.
type procID struct {
	pid   int
	start uint64 // start time, clock ticks since boot
}

// tree is one hold's processes.
type tree struct {
	name, token string
	child       int             // pid of the running child, 0 when none
	seen        map[procID]bool // its processes at the last scan
	cg          *cgroup         // the running child's cgroup, nil when none
	cgroups     bool            // its children ran in cgroups of their own
}

// proc is one process of a /proc snapshot.
type proc struct {
	procID
	ppid, pgid int
	zombie     bool
	comm       string
}

var subreaperOnce sync.Once

// becomeSubreaper makes this process a child subreaper, once: the orphans
// of its lives' trees become its children.
func becomeSubreaper(log *slog.Logger) {
	subreaperOnce.Do(func() {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			log.Warn("cannot become a child subreaper: the orphans of command lives go to the watchdog or init, and are found only while they carry their life's IMMORTALD_* variables", "err", err)
		}
	})
}

// begin registers a hold of life name with fencing token token; member is
// the member's logger, for what concerns no one hold.
func (t *tracker) begin(name string, token int64, member *slog.Logger) *tree {
	becomeSubreaper(member)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.self == 0 {
		t.self = os.Getpid()
		t.log = member
		if t.fs, t.err = procfs.NewDefaultFS(); t.err != nil {
			member.Error("cannot read /proc: the processes a command life's child leaves outside its process group cannot be found", "err", t.err)
		}
	}
	if t.cgBase == "" && t.cgOff == nil {
		if t.cgBase, t.cgOff = cgroupBase(t.self); t.cgOff != nil {
			member.Info("command lives' children run without a cgroup of their own; the member finds their processes as their subreaper", "why", t.cgOff)
		}
	}
	tr := &tree{name: name, token: strconv.FormatInt(token, 10), seen: map[procID]bool{}}
	t.holds[tr] = true
	t.nholds.Store(int64(len(t.holds)))
	t.begun[[2]string{tr.name, tr.token}] = time.Time{}
	if t.stopScan == nil {
		t.stopScan = make(chan struct{})
		go t.scanLoop(t.stopScan)
	}
	return tr
}

// end kills what is left of tr and forgets it.
func (t *tracker) end(tr *tree, log *slog.Logger) {
	t.killTree(tr, false, log)
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.holds, tr)
	t.nholds.Store(int64(len(t.holds)))
	t.begun[[2]string{tr.name, tr.token}] = time.Now()
	for id, o := range t.ours {
		if o == tr {
			t.ours[id] = nil // still reaped when it is a zombie of ours
		}
	}
	if len(t.holds) > 0 {
		return
	}
	if t.stopScan != nil {
		close(t.stopScan) // started again by the next hold
		t.stopScan = nil
	}
	if t.cgBase != "" {
		_ = os.Remove(t.cgBase) // made again by the next hold
		t.cgBase = ""
	}
}

// start runs startFn, which forks the child into the cgroup whose
// directory is open as cgroupFD (-1: none), and records the child as
// direct; no reap runs meanwhile (forkMu), so none takes the child before
// it is known as direct (os/exec reaps it). A start that fails in a cgroup
// is tried once more without, and cgroups are then off for good.
func (t *tracker) start(tr *tree, startFn func(cgroupFD int) (int, error)) error {
	t.mu.Lock()
	fd := -1
	if t.cgBase != "" {
		cg, err := newCgroup(t.cgBase, dirPrefix(tr.name))
		if err != nil {
			t.cgOff = err
			t.log.Warn("cannot make a cgroup for a command life's child; children run without one from now on", "err", err)
		} else {
			tr.cg, fd = cg, int(cg.fd.Fd())
		}
	}
	cg := tr.cg
	t.mu.Unlock()
	// Children start in parallel; no reap runs meanwhile (forkMu).
	t.forkMu.RLock()
	defer t.forkMu.RUnlock()
	pid, err := startFn(fd)
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil && cg != nil {
		t.cgOff = err
		t.log.Warn("cannot start a command life's child in a cgroup of its own; children run without one from now on", "err", err)
		cg.remove()
		tr.cg = nil
		t.mu.Unlock()
		pid, err = startFn(-1)
		t.mu.Lock()
	}
	tr.cgroups = tr.cg != nil
	if err != nil {
		return err
	}
	t.direct[pid] = tr
	tr.child = pid
	return nil
}

// exited forgets tr's child, reaped by os/exec.
func (t *tracker) exited(tr *tree, pid int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.direct[pid] == tr {
		// Not when another hold's child has the pid already: reaped by
		// os/exec, this child's pid may have been reused meanwhile.
		delete(t.direct, pid)
	}
	if tr.child == pid {
		tr.child = 0
		if tr.cg != nil {
			tr.cg.remove() // emptied by killTree
			tr.cg = nil
		}
	}
}

// read reads from /proc the processes under roots: each, its children
// (from /proc/<pid>/task/*/children, every thread's), theirs, and so on. A
// process that forks or exits while it is read may be missed; killTree
// reads until two reads in a row find nothing alive. No lock is needed.
func (t *tracker) read(roots []int) (map[int]*proc, map[int][]int) {
	snap := make(map[int]*proc)
	kids := make(map[int][]int)
	queue := roots
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		if snap[pid] != nil {
			continue
		}
		p, err := t.fs.Proc(pid)
		if err != nil {
			continue
		}
		st, err := p.Stat()
		if err != nil {
			continue // gone meanwhile
		}
		snap[pid] = &proc{procID: procID{pid, st.Starttime}, ppid: st.PPID, pgid: st.PGRP, zombie: st.State == "Z" || st.State == "X", comm: st.Comm}
		kids[st.PPID] = append(kids[st.PPID], pid)
		queue = append(queue, observe.Children(pid)...)
	}
	return snap, kids
}

// rootsOf returns where a read of tr's processes starts: its child, the
// processes of its cgroup and those it was seen with, and the member's
// children that no Runner started (memberKids, read before): orphans it
// adopted, of this hold or another. Every process of tr is under one of
// them: the member is their subreaper. t.mu is held.
func (t *tracker) rootsOf(tr *tree, memberKids []int) []int {
	var roots []int
	if tr.child != 0 {
		roots = append(roots, tr.child)
	}
	if tr.cg != nil {
		roots = append(roots, tr.cg.procs()...)
	}
	for id := range tr.seen {
		roots = append(roots, id.pid)
	}
	for _, pid := range memberKids {
		if t.direct[pid] == nil {
			roots = append(roots, pid)
		}
	}
	return roots
}

// readTree reads what may be tr's processes, taking t.mu only to find where
// to start. With a cgroup, the member's own children are not read: every
// process of the child's tree is in the cgroup (or was seen, if it moved
// out), and reading the member's children costs a read per member thread
// (one per child, see start).
func (t *tracker) readTree(tr *tree) (map[int]*proc, map[int][]int) {
	t.mu.Lock()
	inCgroup := tr.cgroups
	t.mu.Unlock()
	var memberKids []int
	if !inCgroup {
		memberKids = observe.Children(t.self)
	}
	t.mu.Lock()
	roots := t.rootsOf(tr, memberKids)
	t.mu.Unlock()
	return t.read(roots)
}

// adopted reports whether p is a child of the member that no Runner
// started: an orphan it adopted, or a child of other code of the program.
func (t *tracker) adopted(p *proc) bool { return p.ppid == t.self && t.direct[p.pid] == nil }

// tagged reads the life name and fencing token in p's environment ("" when
// none, or unreadable).
func (t *tracker) tagged(p *proc) (name, token string) {
	pp, err := t.fs.Proc(p.pid)
	if err != nil {
		return "", ""
	}
	env, err := pp.Environ()
	if err != nil {
		return "", ""
	}
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "IMMORTALD_LIFE="); ok {
			name = v
		} else if v, ok := strings.CutPrefix(kv, "IMMORTALD_FENCING_TOKEN="); ok {
			token = v
		}
	}
	return name, token
}

// members returns the processes of tr in snap. t.mu is held.
func (t *tracker) members(tr *tree, snap map[int]*proc, kids map[int][]int) map[int]*proc {
	set := make(map[int]*proc)
	var add func(pid int)
	add = func(pid int) {
		p := snap[pid]
		if p == nil || set[pid] != nil {
			return
		}
		set[pid] = p
		for _, c := range kids[pid] {
			add(c)
		}
	}
	if tr.child != 0 {
		add(tr.child)
	}
	if tr.cg != nil {
		for _, pid := range tr.cg.procs() {
			add(pid)
		}
	}
	for pid, p := range snap {
		switch {
		case tr.seen[p.procID]:
			add(pid)
		case tr.child != 0 && p.pgid == tr.child:
			add(pid)
		case t.adopted(p) && !p.zombie && t.ours[p.procID] == nil:
			if name, token := t.tagged(p); name == tr.name && token == tr.token {
				add(pid)
			}
		}
	}
	return set
}

// scanLoop refreshes every tree each scanEvery, until stop is closed (the
// last hold ended).
func (t *tracker) scanLoop(stop <-chan struct{}) {
	tick := time.NewTicker(scanEvery)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		snap, kids := t.read(observe.Children(t.self)) // the member's whole subtree
		t.mu.Lock()
		t.scanLocked(snap, kids)
		t.mu.Unlock()
		t.reapQueued()
	}
}

// scanLocked refreshes each tree's seen set from snap, the member's whole
// subtree, kills adopted orphans tagged with a hold that is not registered
// (it ended: they escaped its kill), and reaps the zombies of processes
// attributed to holds. t.mu is held.
func (t *tracker) scanLocked(snap map[int]*proc, kids map[int][]int) {
	if t.err != nil {
		return
	}
	for tr := range t.holds {
		set := t.members(tr, snap, kids)
		tr.seen = make(map[procID]bool, len(set))
		for _, p := range set {
			tr.seen[p.procID] = true
			t.ours[p.procID] = tr
		}
	}
	for _, p := range snap {
		if !t.adopted(p) {
			continue
		}
		if p.zombie {
			if t.reapAll && !t.known(p) {
				t.ours[p.procID] = nil // an orphan that died before any look
			}
			t.reap(p)
			continue
		}
		if o, ok := t.ours[p.procID]; ok && o != nil {
			continue // in a running tree
		}
		name, token := t.tagged(p)
		if _, ran := t.begun[[2]string{name, token}]; !ran && !t.known(p) {
			continue // not a life's of this member: the program's own child
		}
		t.ours[p.procID] = nil
		if signal(p.procID, syscall.SIGKILL) { // not when it is gone since the read
			t.log.Warn("killed a process of a command life whose hold has ended here", "pid", p.pid, "comm", p.comm, "life", name, "fencing_token", token)
		}
	}
	for id := range t.ours {
		if snap[id.pid] == nil || snap[id.pid].procID != id {
			delete(t.ours, id) // gone (reaped by us, or not ours to reap)
		}
	}
	for h, ended := range t.begun {
		// Long after its end, every process of a hold is dead: each one is
		// in this member's subtree, killed at the scan that sees it adopted.
		if !ended.IsZero() && time.Since(ended) > forgetAfter {
			delete(t.begun, h)
		}
	}
}

// forgetAfter is how long after a hold ended its tags still name a life's
// process to kill (begun).
const forgetAfter = time.Minute

// known reports whether p was attributed to a hold at some scan.
func (t *tracker) known(p *proc) bool {
	_, ok := t.ours[p.procID]
	return ok
}

// reap collects p, a zombie child of the member, if it was a life's
// process (attributed at a scan or killed by a Runner). t.mu is held.
func (t *tracker) reap(p *proc) {
	if t.known(p) { // else someone else's child, or never seen alive: not ours to reap
		t.reaps = append(t.reaps, p)
	}
}

// reapQueued reaps the zombies reap queued, with no fork in progress (a
// child forked but not yet recorded as direct would look adopted). t.mu is
// not held.
func (t *tracker) reapQueued() {
	t.forkMu.Lock()
	defer t.forkMu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	done := make(map[int]bool, len(t.reaps))
	for _, p := range t.reaps {
		if !done[p.pid] && t.direct[p.pid] == nil {
			done[p.pid] = true
			var ws unix.WaitStatus
			_, _ = unix.Wait4(p.pid, &ws, unix.WNOHANG, nil)
		}
		delete(t.ours, p.procID)
	}
	t.reaps = nil
}

// refresh records the processes of tr as they are now, before its child
// is told to stop: those its exit orphans are then known by sight, even
// without their environment.
func (t *tracker) refresh(tr *tree) {
	if t.err != nil {
		return
	}
	snap, kids := t.readTree(tr)
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.members(tr, snap, kids) {
		tr.seen[p.procID] = true
		t.ours[p.procID] = tr
	}
}

// killTree SIGKILLs every process of tr, its child too when withChild
// (the caller reaps the child through os/exec), and waits until none is
// left alive, at most KillBound. It logs how many it killed outside the
// child's process group, and an error if some did not die.
func (t *tracker) killTree(tr *tree, withChild bool, log *slog.Logger) {
	if t.err != nil {
		return
	}
	deadline := time.Now().Add(KillBound)
	escaped := map[procID]bool{}
	for clear := 0; clear < 2; {
		snap, kids := t.readTree(tr)
		t.mu.Lock()
		cg, child := tr.cg, tr.child
		if cg != nil && (withChild || child == 0 || snap[child] == nil || snap[child].zombie) {
			// Known by sight before they die, so their zombies are reaped.
			for _, pid := range cg.procs() {
				if p := snap[pid]; p != nil {
					t.ours[p.procID] = tr
				}
			}
			t.mu.Unlock()
			if !cg.kill(KillBound) {
				log.Error("the processes of the child's cgroup do not die after cgroup.kill", "cgroup", cg.dir, "bound", KillBound)
			}
			snap, kids = t.readTree(tr)
			t.mu.Lock()
		}
		for _, p := range snap {
			if p.zombie && t.adopted(p) && t.ours[p.procID] == tr {
				t.reap(p) // killed by cgroup.kill, or died on its own
			}
		}
		var kill []procID
		for pid, p := range t.members(tr, snap, kids) {
			if pid == child && (!withChild || p.zombie) {
				continue
			}
			t.ours[p.procID] = tr
			if p.zombie {
				if t.adopted(p) {
					t.reap(p)
				}
				continue
			}
			kill = append(kill, p.procID)
			if pid != child && (child == 0 || p.pgid != child) {
				escaped[p.procID] = true
			}
		}
		t.mu.Unlock()
		t.reapQueued()
		for _, id := range kill {
			signal(id, syscall.SIGKILL)
		}
		if len(kill) == 0 {
			clear++
			continue
		}
		clear = 0
		if time.Now().After(deadline) {
			log.Error("processes of the life's child do not die after SIGKILL", "alive", len(kill), "bound", KillBound)
			return
		}
		time.Sleep(5 * time.Millisecond) // the kernel takes a moment to tear a killed process down
	}
	if len(escaped) > 0 {
		log.Info("killed the processes the child left outside its process group", "processes", len(escaped))
	}
}

// signal sends sig to the process id names, through a pidfd opened and then
// checked against id's start time: a pid reused meanwhile is not signalled.
// It reports whether the signal was sent.
func signal(id procID, sig syscall.Signal) bool {
	fd, err := unix.PidfdOpen(id.pid, 0)
	if err != nil {
		return false // gone
	}
	defer unix.Close(fd)
	if start, err := startTime(id.pid); err != nil || start != id.start {
		return false
	}
	return unix.PidfdSendSignal(fd, sig, nil, 0) == nil
}

// startTime reads the start time of pid from /proc/<pid>/stat.
func startTime(pid int) (uint64, error) {
	p, err := procs.fs.Proc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.Stat()
	if err != nil {
		return 0, err
	}
	return st.Starttime, nil
}
