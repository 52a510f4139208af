package engine

// The work of a life: a life whose kind has a Runner runs it while this
// member holds it, besides its age. The engine decides when a Run starts,
// is asked to stop, or is told to stop at once; the driver (Effects) runs
// it and tells RunReturned. A graceful stop keeps the life's election key
// until the Run returned: the handoff or clean-up is sent only then.

// runState is where the Run of a hold is.
type runState struct {
	started   bool // a Run was started (StartWork)
	stopAsked bool // it was asked to stop (StopWork)
	expired   bool // it was told to stop at once (ExpireWork)
	returned  bool // it returned
	// abandoned: the driver gave it up (RunAbandoned): it was told to stop
	// and did not return within the driver's bound. The hold's next step
	// goes on as if it had returned; the name stays in runs until it does.
	abandoned bool
}

// startWork starts a Run of l, which is running, unless its kind has none
// or the member is shutting down (a life won during the shutdown runs
// without its work until the revoke, and its next holder restores its
// last state).
func (e *Engine) startWork(l *Life) {
	if !l.hasWork || e.stopping || e.lease == 0 {
		return
	}
	l.run = runState{started: true}
	e.runs[l.name] = l
	e.cfg.Effects.StartWork(l)
}

// stopWork asks l's Run to stop gracefully, and reports whether no Run of
// l runs (there is none, or it returned).
func (e *Engine) stopWork(l *Life) bool {
	if workStopped(l) {
		return true
	}
	if !l.run.stopAsked {
		l.run.stopAsked = true
		e.cfg.Effects.StopWork(l)
	}
	return false
}

// workStopped reports whether no Run of l runs, or its Run was abandoned:
// either way the hold's next step need not wait for it.
func workStopped(l *Life) bool {
	return l == nil || !l.run.started || l.run.returned || l.run.abandoned
}

// resumeWork starts a new Run of c's life, which is running, when its
// last Run was stopped for a handoff that did not happen (or is off).
func (e *Engine) resumeWork(c *cand) {
	l := c.h
	if c.phase != Running || !l.run.started {
		return
	}
	if l.run.abandoned {
		e.stop(c, stopAbandoned) // a Run given up holds no life here
		return
	}
	if l.run.stopAsked && l.run.returned {
		e.log.Info("the handoff did not happen: the life's work runs again", "life", l.name, "incarnation", l.incarnate)
		e.startWork(l)
	}
}

// expireWork tells l's Run, if one runs, to stop at once.
func (e *Engine) expireWork(l *Life, why string) {
	if l == nil || !l.run.started || l.run.returned || l.run.expired {
		return
	}
	l.run.expired = true
	e.cfg.Effects.ExpireWork(l, why)
}

// RunReturned notes that l's Run returned: its life's next step (a
// handoff, a clean-up, a new hold of the name) may go on. It reports
// whether the Run had been asked to stop (false: it returned on its own;
// the life stays held, its work does not run again in this hold).
func (e *Engine) RunReturned(l *Life) (asked bool) {
	l.run.returned = true
	if e.runs[l.name] == l {
		delete(e.runs, l.name)
	}
	if c := e.cands[l.name]; c != nil {
		e.queue(c) // a handoff or a clean-up may wait for this
	}
	return l.run.stopAsked || l.run.expired
}

// RunAbandoned gives l's Run up: the driver told it to stop and it did not
// return within the driver's bound (a Run that ignores its stop). The
// hold's next step goes on as if it had returned: a handoff or clean-up
// waiting for it is sent, and a life still running here is stopped (its
// last age written, its election key resigned) so that a peer can run it.
// The driver must fence the Run's writes first: a peer's hold is then safe
// from it. The name stays among the Runs that have not returned, so this
// member starts no new hold of it, and does not campaign for it, until
// RunReturned. It reports whether l's Run was newly given up (false: it
// has returned, or was given up already).
func (e *Engine) RunAbandoned(l *Life) bool {
	if !l.run.started || l.run.returned || l.run.abandoned {
		return false
	}
	l.run.abandoned = true
	if c := e.cands[l.name]; c != nil {
		if c.h == l && c.phase == Running {
			e.stop(c, stopAbandoned)
		}
		e.queue(c)
	}
	return true
}

// RunsActive counts the Runs that have not returned and were not given up:
// the work this member must still stop by its safe deadline.
func (e *Engine) RunsActive() int {
	n := 0
	for _, l := range e.runs {
		if !l.run.abandoned {
			n++
		}
	}
	return n
}

// ExpireAllWork tells every Run that has not returned to stop at once (the
// safe deadline, a lost session, a shutdown that took too long), and
// returns how many were told.
func (e *Engine) ExpireAllWork() int {
	n := 0
	for _, l := range e.runs {
		if !l.run.expired {
			l.run.expired = true
			e.cfg.Effects.ExpireWork(l, "")
			n++
		}
	}
	return n
}

// StopAllWork asks every Run to stop gracefully and returns the lives
// whose Run has not returned.
func (e *Engine) StopAllWork() []*Life {
	var out []*Life
	for _, l := range e.runs {
		e.stopWork(l)
		if !l.run.returned {
			out = append(out, l)
		}
	}
	return out
}

// WorkLost handles a state write of l that failed because l's election key
// is no longer its holder's: the life is lost if it runs; else its Run is
// told to stop at once.
func (e *Engine) WorkLost(l *Life) {
	if c := e.cands[l.name]; c != nil && c.phase == Running && c.h == l {
		e.lose(c, "a fenced state write failed")
		return
	}
	e.expireWork(l, "a fenced state write failed")
}

// StateApplied notes that l's state record was written at revision rev.
func (e *Engine) StateApplied(l *Life, rev int64) { l.stateRev = max(l.stateRev, rev) }
