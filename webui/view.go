package webui

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/immortald/immortald/registry"
	"github.com/immortald/immortald/workload"
)

// Snapshot is the cluster as the Server's watch last saw it.
type Snapshot struct {
	// Rev is the etcd revision the watch has seen everything up to.
	Rev int64 `json:"rev"`
	// Member is the id of the member that serves the page.
	Member  string       `json:"member"`
	Lives   []LifeView   `json:"lives"`   // sorted by name
	Members []MemberView `json:"members"` // sorted by id
	// Log is the latest entries of the event log (at most logSize), oldest
	// first.
	Log []Entry `json:"log"`
	// Etcd is why the watch is behind ("" while it is current): the page
	// shows the cluster as of Rev.
	Etcd string `json:"etcd,omitempty"`
}

// Delta is one change of the cluster after a Snapshot or the Delta before.
type Delta struct {
	Rev int64 `json:"rev"`
	// Lives are the lives that changed, as they are now.
	Lives []LifeView `json:"lives,omitempty"`
	// Removed are the names of lives no longer requested.
	Removed []string `json:"removed,omitempty"`
	// Members is every member, when any changed; nil when none did.
	Members []MemberView `json:"members,omitempty"`
	// Log is the new entries of the event log.
	Log []Entry `json:"log,omitempty"`
	// Etcd is set when Snapshot.Etcd changed: its new value.
	Etcd *string `json:"etcd,omitempty"`
}

func (d *Delta) empty() bool {
	return len(d.Lives) == 0 && len(d.Removed) == 0 && d.Members == nil && len(d.Log) == 0 && d.Etcd == nil
}

// LifeView is one life as the page shows it: its Status (see registry.Status)
// with its fencing token and two ages.
type LifeView struct {
	Name        string `json:"name"`
	Kind        string `json:"kind"`
	State       string `json:"state"` // running, waiting or invalid
	Holder      string `json:"holder,omitempty"`
	Incarnation int64  `json:"incarnation"`
	LifeID      int64  `json:"life_id"`
	// FencingToken is the running holder's token; 0 when none runs it.
	FencingToken int64 `json:"fencing_token,omitempty"`
	// AgeMS is the stored age: as of its holder's latest heartbeat that
	// etcd applied (what `get-age -o json` shows). It never goes back.
	AgeMS int64 `json:"age_ms"`
	// AgeNowMS is the age estimated at the time the message was sent: the
	// stored age plus the time since this member saw it stored, while the
	// life runs. The page ticks it on while Ticking.
	AgeNowMS int64 `json:"age_now_ms"`
	Ticking  bool  `json:"ticking"`
	// CheckpointTime is the holder's clock when AgeMS was stored.
	CheckpointTime *time.Time            `json:"checkpoint_time,omitempty"`
	Labels         map[string]string     `json:"labels,omitempty"`
	Child          *workload.ChildStatus `json:"child,omitempty"`
	Error          string                `json:"error,omitempty"`
	Quarantined    bool                  `json:"quarantined,omitempty"`
}

// MemberView is one member as the page shows it.
type MemberView struct {
	ID      string    `json:"id"`
	Address string    `json:"address,omitempty"`
	Version string    `json:"version,omitempty"`
	Started time.Time `json:"started"`
	PID     int       `json:"pid,omitempty"`
	// Kinds are the kinds it runs, "age" first.
	Kinds []string `json:"kinds"`
	// Ready: its record is on a live lease (it is in the list at all) and
	// this member saw a heartbeat of it applied within readyWithin.
	Ready bool `json:"ready"`
	// LivesHeld counts the lives running on it now (from the lives' records,
	// not the count its record carries, which is refreshed every TTL).
	LivesHeld int `json:"lives_held"`
	// Corrupt says why its record does not parse ("" when it does).
	Corrupt string `json:"corrupt,omitempty"`
}

// Entry is one line of the event log.
type Entry struct {
	// Seq numbers the entries of one watch, from 1.
	Seq int64 `json:"seq"`
	// Time is when this member saw it.
	Time time.Time `json:"time"`
	// Rev is the etcd revision of the change.
	Rev int64 `json:"rev"`
	// Event is one of the Event* words.
	Event string `json:"event"`
	// Life is the life's name; "" for an entry of a member.
	Life string `json:"life,omitempty"`
	// Member is the member of a member's entry, or the life's holder.
	Member string `json:"member,omitempty"`
	// From is the previous holder, for a life that moved.
	From        string `json:"from,omitempty"`
	Incarnation int64  `json:"incarnation,omitempty"`
	AgeMS       int64  `json:"age_ms,omitempty"`
	// Detail says more, in words.
	Detail string `json:"detail,omitempty"`
}

// The words of the event log. Each is derived from the StatusWatch's event
// (registry.Event*) and what etcd held at its revision, as said here.
const (
	// EventRequested: a new request (registry.EventAdded).
	EventRequested = "requested"
	// EventSpawned: a life's first run (started, incarnation 1).
	EventSpawned = "spawned"
	// EventStarted: running again where this watch had not seen it run
	// (started, a later incarnation).
	EventStarted = "started"
	// EventStopped: no longer running. Its detail says whether the holder
	// let it go (registry.StatusChange.HolderLive) or its lease ended.
	EventStopped = "stopped"
	// EventHandedOff: running on another member after its holder let it
	// go (a handoff, a graceful shutdown such as a SIGTERM).
	EventHandedOff = "handed off"
	// EventFailedOver: running on another member after its holder's lease
	// ended under it (a crash, an expiry).
	EventFailedOver = "failed over"
	// EventMoved: running on another member, this watch having seen no
	// stop in between (a watch read again after it broke).
	EventMoved = "moved"
	// EventRestarted: a new incarnation under the same member id.
	EventRestarted = "restarted"
	// EventInvalid: the request turned invalid.
	EventInvalid = "invalid"
	// EventQuarantined: a corrupt age record's bytes were kept in
	// quarantine/<name>.
	EventQuarantined = "quarantined"
	// EventChanged: labels, kind, error or the child's status changed.
	EventChanged = "changed"
	// EventRemoved: the request was deleted.
	EventRemoved = "removed"
	// EventJoined: a member record appeared.
	EventJoined = "joined"
	// EventLeft: a member record went: its lease was revoked (a shutdown,
	// or its watchdog after a crash) or expired.
	EventLeft = "left"
)

// stopKind is how a life's last run ended, as far as this watch saw.
type stopKind int

const (
	stopUnseen stopKind = iota // running, or no stop seen since it ran
	stopLetGo                  // its holder let it go
	stopLost                   // its holder's lease ended
)

// word names change c of life l (as it was before c) for the log, with the
// previous holder for a move and a detail; "" when c is not logged.
func word(l *life, c registry.StatusChange, quarantined bool) (ev, from, detail string) {
	st := c.Status
	switch c.Event {
	case registry.EventAdded:
		return EventRequested, "", "kind " + st.Kind
	case registry.EventStarted:
		if st.Incarnation == 1 {
			return EventSpawned, "", ""
		}
		return EventStarted, "", ""
	case registry.EventMoved:
		from = l.lastHolder
		switch l.stop {
		case stopLetGo:
			return EventHandedOff, from, from + " let it go"
		case stopLost:
			return EventFailedOver, from, from + "'s lease ended"
		}
		return EventMoved, from, "no stop seen in between"
	case registry.EventRestarted:
		switch l.stop {
		case stopLetGo:
			return EventRestarted, "", "it had let it go"
		case stopLost:
			return EventRestarted, "", "after its lease ended"
		}
		return EventRestarted, "", ""
	case registry.EventStopped:
		if c.HolderLive {
			return EventStopped, "", l.st.Holder + " let it go"
		}
		return EventStopped, "", l.st.Holder + "'s lease ended"
	case registry.EventInvalid:
		return EventInvalid, "", st.Error
	case registry.EventChanged:
		if quarantined && !l.detail.Quarantined {
			return EventQuarantined, "", st.Error
		}
		return EventChanged, "", changeDetail(l.st, st)
	case registry.EventRemoved:
		return EventRemoved, "", ""
	}
	return "", "", ""
}

// changeDetail says what changed from a to b, other than the age.
func changeDetail(a, b registry.Status) string {
	var out []string
	if a.State != b.State {
		out = append(out, a.State+" to "+b.State)
	}
	if a.Kind != b.Kind {
		out = append(out, "kind "+b.Kind)
	}
	if !maps.Equal(a.Labels, b.Labels) {
		out = append(out, "labels")
	}
	if !sameChild(a.Child, b.Child) {
		out = append(out, childText(b.Child))
	}
	if a.Error != b.Error {
		if b.Error == "" {
			out = append(out, "error cleared")
		} else {
			out = append(out, "error: "+b.Error)
		}
	}
	return strings.Join(out, "; ")
}

func sameChild(a, b *workload.ChildStatus) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// childText is a child's status in words.
func childText(c *workload.ChildStatus) string {
	if c == nil {
		return "no child status"
	}
	s := "child " + c.State
	if c.State != workload.ChildRunning || c.ExitCode != 0 {
		s += fmt.Sprintf(", last exit %d", c.ExitCode)
	}
	if c.Restarts > 0 {
		s += fmt.Sprintf(", %d restarts", c.Restarts)
	}
	if c.Error != "" {
		s += ": " + c.Error
	}
	return s
}

// kindsOf is the kinds a member record says it runs, "age" first.
func kindsOf(rec registry.MemberRecord) []string {
	out := []string{workload.AgeKind}
	for _, k := range slices.Sorted(slices.Values(rec.Kinds)) {
		if k != workload.AgeKind {
			out = append(out, k)
		}
	}
	return out
}
