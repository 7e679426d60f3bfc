package link

import (
	"sort"

	"qkdkms/raftstore"
)

// scheduler chooses the connection each session fills. Every other session
// goes by priority (Pick); the turns between go round robin over the needy
// connections (the one whose last round-robin turn is oldest), so each
// connection below its
// max_key_count gets at least 1/(2n) of the sessions when n connections
// need key, whatever the others' priority (a flood of high-priority
// registrations cannot starve a pool). Only the goroutine driving the
// link's sessions uses it.
type scheduler struct {
	turn   uint64
	served map[string]uint64 // connection ID → its last round-robin turn
}

// next picks among conns (the site's connections, the block in flight
// already counted); ok is false when no pool between a and b needs key.
func (s *scheduler) next(conns []raftstore.ConnectionStatus, a, b string) (raftstore.ConnectionStatus, bool) {
	cand := needy(conns, a, b)
	if len(cand) == 0 {
		return raftstore.ConnectionStatus{}, false
	}
	s.turn++
	if s.turn%2 == 1 {
		return byPriority(cand), true
	}
	c := s.leastRecent(cand)
	if s.served == nil {
		s.served = map[string]uint64{}
	}
	s.served[c.ID()] = s.turn
	// Forget connections that no longer need key.
	if len(s.served) > 2*len(cand) {
		keep := make(map[string]uint64, len(cand))
		for _, x := range cand {
			if t, ok := s.served[x.ID()]; ok {
				keep[x.ID()] = t
			}
		}
		s.served = keep
	}
	return c, true
}

// leastRecent is the candidate whose round-robin turn is oldest (never
// served first), ties by connection ID.
func (s *scheduler) leastRecent(cand []raftstore.ConnectionStatus) raftstore.ConnectionStatus {
	best := cand[0]
	for _, c := range cand[1:] {
		tc, tb := s.served[c.ID()], s.served[best.ID()]
		if tc < tb || (tc == tb && c.ID() < best.ID()) {
			best = c
		}
	}
	return best
}

// Pick is the priority order's choice among conns: connections between the
// two sites whose pool holds fewer than max_key_count keys, highest QoS
// priority first, then the emptiest (by fill ratio).
func Pick(conns []raftstore.ConnectionStatus, a, b string) (raftstore.ConnectionStatus, bool) {
	cand := needy(conns, a, b)
	if len(cand) == 0 {
		return raftstore.ConnectionStatus{}, false
	}
	return byPriority(cand), true
}

// needy are the connections between sites a and b whose pool is below
// max_key_count.
func needy(conns []raftstore.ConnectionStatus, a, b string) []raftstore.ConnectionStatus {
	var cand []raftstore.ConnectionStatus
	for _, c := range conns {
		between := (c.SourceKME == a && c.TargetKME == b) || (c.SourceKME == b && c.TargetKME == a)
		if between && c.MaxKeyCount > 0 && c.StoredKeys < int64(c.MaxKeyCount) {
			cand = append(cand, c)
		}
	}
	return cand
}

func byPriority(cand []raftstore.ConnectionStatus) raftstore.ConnectionStatus {
	sort.SliceStable(cand, func(i, j int) bool {
		if cand[i].Priority != cand[j].Priority {
			return cand[i].Priority > cand[j].Priority
		}
		fi := float64(cand[i].StoredKeys) / float64(cand[i].MaxKeyCount)
		fj := float64(cand[j].StoredKeys) / float64(cand[j].MaxKeyCount)
		if fi != fj {
			return fi < fj
		}
		return cand[i].ID() < cand[j].ID()
	})
	return cand[0]
}
