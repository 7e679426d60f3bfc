package checker

import "fmt"

// Relay key accounting of a network run (trusted-node relay): what every
// site's leader reports after healing.

// RelayLink is the relay key consumed on one link, per direction, at each
// end: SentAB at A (A→B's sender), ReceivedAB at B, and the reverse.
type RelayLink struct {
	A          string `json:"a"`
	B          string `json:"b"`
	SentAB     uint64 `json:"sent_ab"`
	ReceivedAB uint64 `json:"received_ab"`
	SentBA     uint64 `json:"sent_ba"`
	ReceivedBA uint64 `json:"received_ba"`
}

// RelayConn is a relayed connection's counts at its source site (from its
// Raft log): blocks done, their bits, the relay key their hops used, and
// blocks burned.
type RelayConn struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	Pending  string `json:"pending,omitempty"`
	Done     int64  `json:"done"`
	DoneBits int64  `json:"done_bits"`
	HopBytes int64  `json:"hop_bytes"`
	Burned   int64  `json:"burned"`
}

// RelayState is the network after healing.
type RelayState struct {
	Links []RelayLink `json:"links"`
	Conns []RelayConn `json:"connections"`
}

// maxHopWaste bounds the relay key one burned block can have consumed:
// the largest block plus its tag key, on every hop of the longest route
// a network of the experiments has (node/network).
const maxHopWaste = (4096 + 32) * 8

// RelayReport is the relay's part of a run's verdict.
type RelayReport struct {
	State RelayState `json:"state"`
	// SentBytes is the relay key the sending ends consumed, over every link
	// and direction; HopBytes what the delivered blocks' hops account for.
	SentBytes uint64 `json:"relay_key_sent_bytes"`
	HopBytes  int64  `json:"relay_key_delivered_hop_bytes"`
	Burned    int64  `json:"blocks_burned"`
	Delivered int64  `json:"blocks_delivered"`
	// Violations (must be 0): ReceiverAhead counts directions where the
	// receiving end consumed relay key the sending end never committed;
	// Underused is 1 when the delivered blocks account for more relay key
	// than was consumed (a byte used for two blocks); Waste is 1 when relay
	// key was consumed beyond the delivered blocks with no burned block to
	// explain it (or beyond what the burned ones can explain); PoolsDiffer
	// is 1 when the source and destination pools were not identical.
	ReceiverAhead int         `json:"receiver_ahead"`
	Underused     int         `json:"underused"`
	Waste         int         `json:"unexplained_waste"`
	PoolsDiffer   int         `json:"pools_differ"`
	Pools         []PoolState `json:"pools_after_healing"`
	Violations    []string    `json:"violations,omitempty"`
}

// OK reports whether the relay's counters are 0.
func (r *RelayReport) OK() bool {
	return r == nil || r.ReceiverAhead == 0 && r.Underused == 0 && r.Waste == 0 && r.PoolsDiffer == 0
}

// CheckRelay checks the relay key accounting after healing: each hop
// consumed at its receiving end only what its sending end committed first;
// relay key consumed by the senders equals what the delivered blocks' hops
// used ((bytes+32)·hops each) plus at most what the burned blocks used, and
// exactly that when none was burned; the pools at source and destination
// agree (pools: the agreeing reading, agreed false when they never did).
func CheckRelay(st RelayState, pools []PoolState, agreed bool) *RelayReport {
	r := &RelayReport{State: st, Pools: pools}
	for _, l := range st.Links {
		r.SentBytes += l.SentAB + l.SentBA
		for _, d := range []struct {
			from, to       string
			sent, received uint64
		}{{l.A, l.B, l.SentAB, l.ReceivedAB}, {l.B, l.A, l.SentBA, l.ReceivedBA}} {
			if d.received > d.sent {
				r.ReceiverAhead++
				r.Violations = append(r.Violations, fmt.Sprintf("relay key %s→%s: %d bytes consumed at %s, only %d sent by %s",
					d.from, d.to, d.received, d.to, d.sent, d.from))
			}
		}
	}
	for _, c := range st.Conns {
		r.HopBytes += c.HopBytes
		r.Burned += c.Burned
		r.Delivered += c.Done
		if c.Pending != "" {
			r.Burned++ // still to be burned: counted as burned
		}
	}
	switch waste := int64(r.SentBytes) - r.HopBytes; {
	case waste < 0:
		r.Underused = 1
		r.Violations = append(r.Violations, fmt.Sprintf("delivered blocks account for %d bytes of relay key, only %d consumed: a byte used twice", r.HopBytes, r.SentBytes))
	case waste > 0 && (r.Burned == 0 || waste > r.Burned*maxHopWaste):
		r.Waste = 1
		r.Violations = append(r.Violations, fmt.Sprintf("%d bytes of relay key consumed beyond the delivered blocks with %d burned", waste, r.Burned))
	}
	if !agreed {
		r.PoolsDiffer = 1
		r.Violations = append(r.Violations, fmt.Sprintf("pools differ after healing: %+v", pools))
	}
	return r
}
