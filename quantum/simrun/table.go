package simrun

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Row is one line of the table: the sessions run at one distance and block
// size, summed.
type Row struct {
	Km       float64
	Block    int // key block: sifted key-basis bits per session
	Sessions int // sessions run
	Aborted  int // sessions that ended without key

	QBER   float64 // key-basis QBER, detected errors / sifted key bits
	Sifted uint64  // sifted key-basis bits (input of reconciliation)
	Leaked uint64  // bits disclosed by reconciliation (λ_EC)
	F      float64 // reconciliation efficiency leaked / (n·h(QBER))
	Final  uint64  // secret key bits produced

	Pulses     uint64  // pulses sent
	SimSeconds float64 // simulated link time
	PerPulse   float64 // final bits per pulse
	PerSecond  float64 // final bits per second of simulated time
	GLLP       float64 // asymptotic decoy-state rate per pulse, same model

	StepWall []time.Duration // wall time per step, summed over sessions
	Wall     time.Duration   // wall time of the whole point
	Note     string          // why sessions aborted, if any
}

// WriteTable prints rows as an aligned table.
func WriteTable(w io.Writer, stepNames []string, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := []string{"km", "block", "sess", "QBER%", "sifted", "leaked", "f", "final", "bits/pulse", "bits/s(sim)", "GLLP/pulse"}
	for _, s := range stepNames {
		head = append(head, s+"(ms)")
	}
	head = append(head, "wall(s)", "")
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, r := range rows {
		cols := []string{
			fmt.Sprintf("%g", r.Km),
			fmt.Sprintf("%d", r.Block),
			fmt.Sprintf("%d/%d", r.Sessions-r.Aborted, r.Sessions),
			fmt.Sprintf("%.3f", 100*r.QBER),
			fmt.Sprintf("%d", r.Sifted),
			fmt.Sprintf("%d", r.Leaked),
			fmtF(r.F),
			fmt.Sprintf("%d", r.Final),
			fmt.Sprintf("%.3g", r.PerPulse),
			fmt.Sprintf("%.4g", r.PerSecond),
			fmt.Sprintf("%.3g", r.GLLP),
		}
		for i := range stepNames {
			var d time.Duration
			if i < len(r.StepWall) {
				d = r.StepWall[i]
			}
			cols = append(cols, fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)))
		}
		cols = append(cols, fmt.Sprintf("%.2f", r.Wall.Seconds()), "  "+r.Note)
		fmt.Fprintln(tw, strings.Join(cols, "\t"))
	}
	return tw.Flush()
}

func fmtF(f float64) string {
	if f == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", f)
}
