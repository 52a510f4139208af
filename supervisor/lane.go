package supervisor

// lane runs one generation's ordered writes one at a time, in the order
// they are given: the election batches that write the final age of a life
// that ran (a handoff, a clean-up), the heartbeats, the repairs of age
// records and the final checkpoint. So a member's writes for one life are
// applied in the order their ages were taken, and no heartbeat falls
// between the stop of a life and the write of its final record (it would
// carry the stopped life forward past its final age). It is a goroutine
// with a queue rather than a mutex held across Txns: nothing waits on it
// but the writes that must.
type lane struct {
	jobs chan func()
	quit chan struct{} // closed by stop
}

func newLane() *lane { return &lane{jobs: make(chan func()), quit: make(chan struct{})} }

// run runs the jobs until stop.
func (l *lane) run() {
	for {
		select {
		case j := <-l.jobs:
			j()
		case <-l.quit:
			return
		}
	}
}

// do runs j in the lane, after the writes given before it, and returns
// once it ran; false, without running it, when the lane stopped first.
func (l *lane) do(j func()) bool {
	done := make(chan struct{})
	select {
	case l.jobs <- func() { defer close(done); j() }:
	case <-l.quit:
		return false
	}
	<-done
	return true
}

// stop ends the lane once its current job (if any) returns.
func (l *lane) stop() { close(l.quit) }
