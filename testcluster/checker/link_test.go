package checker

import (
	"testing"
	"time"
)

// TestCheckLink: sessions are summed over a site's leaders (a restarted
// leader's counters start again), a pad offset below one already used is a
// violation, and pools that never agreed after healing are one.
func TestCheckLink(t *testing.T) {
	t0 := time.Now()
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }
	for _, tc := range []struct {
		name        string
		samples     []LinkSample
		agreed      bool
		committed   int64
		aborted     int64
		leaders     int
		padReuse    int
		poolsDiffer int
		ok          bool
	}{
		{"one leader", []LinkSample{
			{At: at(0), Site: "a", Leader: "a-1", Sessions: 1, PadEnd: 64},
			{At: at(1), Site: "a", Leader: "a-1", Sessions: 3, Aborted: 1, PadEnd: 192},
		}, true, 3, 1, 1, 0, 0, true},
		{"new leader resumes past the old pads", []LinkSample{
			{At: at(0), Site: "a", Leader: "a-1", Sessions: 4, Aborted: 1, PadEnd: 256},
			{At: at(1), Site: "a", Leader: "a-2", Sessions: 0},
			{At: at(2), Site: "a", Leader: "a-2", Sessions: 2, Aborted: 2, PadEnd: 1024},
		}, true, 6, 3, 2, 0, 0, true},
		{"restarted leader, same ID", []LinkSample{
			{At: at(0), Site: "a", Leader: "a-1", Sessions: 5, PadEnd: 320},
			{At: at(1), Site: "a", Leader: "a-1", Sessions: 1, PadEnd: 1000},
		}, true, 6, 0, 2, 0, 0, true},
		{"pads used twice", []LinkSample{
			{At: at(0), Site: "a", Leader: "a-1", Sessions: 5, PadEnd: 320},
			{At: at(1), Site: "a", Leader: "a-2", Sessions: 1, PadEnd: 256},
		}, true, 6, 0, 2, 1, 0, false},
		{"pools differ", []LinkSample{
			{At: at(0), Site: "a", Leader: "a-1", Sessions: 1, PadEnd: 64},
		}, false, 1, 0, 1, 0, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := CheckLink("sim", tc.samples, []PoolState{{Site: "a"}, {Site: "b"}}, tc.agreed)
			if r.Committed["a"] != tc.committed || r.Aborted["a"] != tc.aborted || r.Leaders["a"] != tc.leaders ||
				r.PadReuse != tc.padReuse || r.PoolsDiffer != tc.poolsDiffer || r.OK() != tc.ok {
				t.Fatalf("got %+v", r)
			}
			rep := &Report{Link: r}
			if rep.OK() != tc.ok {
				t.Fatalf("Report.OK %v with link %+v", rep.OK(), r)
			}
		})
	}
}
