package supervisor

// lane runs one generation's ordered writes one at a time, in the order
// they are given: the election batches that write the final age of a life
// that ran (a handoff, a clean-up), the heartbeats, the repairs of age
// records and the final checkpoint. So a member's writes for one life are
// applied in the order their ages were taken, and no heartbeat falls
// between the stop of a life and the write of its final record (it would
// carry the stopped life forward past its final age). It is a goroutine
// with a queue rather than a mutex held across Txns: nothing waits on it
// but the writes that must. No job may call do.
type lane struct {
	jobs chan laneJob
	quit chan struct{} // closed by stop
}

type laneJob struct {
	fn  func()
	ran chan bool // buffered: whether fn ran
}

func newLane() *lane { return &lane{jobs: make(chan laneJob), quit: make(chan struct{})} }

// run runs the jobs until stop; a job it takes after stop is refused.
func (l *lane) run() {
	for {
		select {
		case j := <-l.jobs:
			select {
			case <-l.quit:
				j.ran <- false
				continue
			default:
			}
			j.fn()
			j.ran <- true
		case <-l.quit:
			return
		}
	}
}

// do runs fn in the lane, after the writes given before it, and returns
// once it ran; false, without running it, when the lane stopped first.
func (l *lane) do(fn func()) bool {
	j := laneJob{fn: fn, ran: make(chan bool, 1)}
	select {
	case l.jobs <- j:
	case <-l.quit:
		return false
	}
	return <-j.ran
}

// stop ends the lane: the job it runs (if any) finishes, and no other
// starts.
func (l *lane) stop() { close(l.quit) }
