package checker

import (
	"fmt"
	"sort"
	"time"
)

// LinkSample is one reading of a site leader's QKD link status during a
// run whose keys come from the link.
type LinkSample struct {
	At     time.Time `json:"at"`
	Site   string    `json:"site"`
	Leader string    `json:"leader"`
	// Sessions committed and aborted by this leader's link so far (its
	// counters start at 0 with each leader, and at each restart).
	Sessions int64 `json:"sessions"`
	Aborted  int64 `json:"aborted"`
	// PadEnd is the end offset of the authentication pads of the leader's
	// last session (0 before its first).
	PadEnd uint64 `json:"pad_end"`
}

// PoolState is a connection's pool at one site's leader.
type PoolState struct {
	Site   string  `json:"site"`
	Blocks float64 `json:"blocks_added"`
	Bits   float64 `json:"stored_bits"`
}

// LinkReport is the QKD link's part of a run's verdict.
type LinkReport struct {
	Driver string `json:"driver"`
	// Committed and Aborted sessions per site, summed over its leaders.
	Committed map[string]int64 `json:"sessions_committed"`
	Aborted   map[string]int64 `json:"sessions_aborted"`
	Leaders   map[string]int   `json:"leaders"` // leader terms seen per site (incarnations)
	// Violations (must be 0): PadReuse counts readings whose pad offset
	// lies below one a site had already used (a pad used twice);
	// PoolsDiffer is 1 when the two sites' pools were not identical
	// (blocks added, stored bits) within the window after healing.
	PadReuse    int         `json:"pad_reuse"`
	PoolsDiffer int         `json:"pools_differ"`
	Pools       []PoolState `json:"pools_after_healing"`
	Violations  []string    `json:"violations,omitempty"`
}

// OK reports whether the link's counters are 0.
func (l *LinkReport) OK() bool { return l == nil || l.PadReuse == 0 && l.PoolsDiffer == 0 }

// CheckLink checks the link samples of a run (in time order per site) and
// the pools read after healing (nil: they never agreed in the window;
// otherwise the agreeing reading of both sites).
func CheckLink(driver string, samples []LinkSample, pools []PoolState, agreed bool) *LinkReport {
	r := &LinkReport{Driver: driver, Committed: map[string]int64{}, Aborted: map[string]int64{}, Leaders: map[string]int{}, Pools: pools}
	sort.SliceStable(samples, func(i, j int) bool { return samples[i].At.Before(samples[j].At) })
	type inc struct {
		leader            string
		sessions, aborted int64
	}
	cur := map[string]*inc{}
	padMax := map[string]uint64{}
	flush := func(site string) {
		if c := cur[site]; c != nil {
			r.Committed[site] += c.sessions
			r.Aborted[site] += c.aborted
		}
	}
	for _, s := range samples {
		c := cur[s.Site]
		// A new leader, or the same node restarted (its counters went back).
		if c == nil || c.leader != s.Leader || s.Sessions < c.sessions || s.Aborted < c.aborted {
			flush(s.Site)
			c = &inc{leader: s.Leader}
			cur[s.Site] = c
			r.Leaders[s.Site]++
		}
		c.sessions, c.aborted = s.Sessions, s.Aborted
		if s.PadEnd == 0 {
			continue
		}
		if s.PadEnd < padMax[s.Site] {
			r.PadReuse++
			if len(r.Violations) < 20 {
				r.Violations = append(r.Violations, fmt.Sprintf("%s: leader %s used pads up to %d at %s, below %d used before",
					s.Site, s.Leader, s.PadEnd, s.At.Format("15:04:05.000"), padMax[s.Site]))
			}
		}
		padMax[s.Site] = max(padMax[s.Site], s.PadEnd)
	}
	for site := range cur {
		flush(site)
	}
	if !agreed {
		r.PoolsDiffer = 1
		r.Violations = append(r.Violations, fmt.Sprintf("pools differ after healing: %+v", pools))
	}
	return r
}
