package checker

import "testing"

func TestCheckRelay(t *testing.T) {
	pools := []PoolState{{Site: "A", Blocks: 3, Bits: 100}, {Site: "C", Blocks: 3, Bits: 100}}
	line := func(ab, abRecv, bc, bcRecv uint64) []RelayLink {
		return []RelayLink{{A: "A", B: "B", SentAB: ab, ReceivedAB: abRecv}, {A: "B", B: "C", SentAB: bc, ReceivedAB: bcRecv}}
	}
	conn := func(done, hop, burned int64) []RelayConn {
		return []RelayConn{{Source: "A", Target: "C", Done: done, DoneBits: 8 * done, HopBytes: hop, Burned: burned}}
	}
	cases := []struct {
		name   string
		st     RelayState
		agreed bool
		ok     bool
		field  func(r *RelayReport) int
	}{
		{"every byte accounted for", RelayState{Links: line(66, 66, 66, 66), Conns: conn(2, 132, 0)}, true, true, nil},
		{"a burned block explains waste", RelayState{Links: line(99, 66, 66, 66), Conns: conn(2, 132, 1)}, true, true, nil},
		{"waste without a burn", RelayState{Links: line(99, 99, 66, 66), Conns: conn(2, 132, 0)}, true, false,
			func(r *RelayReport) int { return r.Waste }},
		{"a byte used for two blocks", RelayState{Links: line(50, 50, 66, 66), Conns: conn(2, 132, 0)}, true, false,
			func(r *RelayReport) int { return r.Underused }},
		{"receiver ahead of its sender", RelayState{Links: line(66, 70, 66, 66), Conns: conn(2, 132, 1)}, true, false,
			func(r *RelayReport) int { return r.ReceiverAhead }},
		{"pools differ", RelayState{Links: line(66, 66, 66, 66), Conns: conn(2, 132, 0)}, false, false,
			func(r *RelayReport) int { return r.PoolsDiffer }},
		{"a pending block counts as burned", RelayState{Links: line(99, 66, 99, 66),
			Conns: []RelayConn{{Source: "A", Target: "C", Done: 2, HopBytes: 132, Pending: "x"}}}, true, true, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := CheckRelay(tc.st, pools, tc.agreed)
			if r.OK() != tc.ok {
				t.Fatalf("OK() = %v, want %v: %+v", r.OK(), tc.ok, r.Violations)
			}
			if tc.field != nil && tc.field(r) != 1 {
				t.Fatalf("the violation is not counted where it belongs: %+v", r)
			}
		})
	}
}
