// Package checker holds a run's history.History to the invariants of the
// README (I1 unique issue, I2 matching, I4 durable, I6 all or nothing):
// double-issued key IDs or bytes, keys issued but not fetchable, fetches of
// never-issued keys, second fetches, byte mismatches, burned keys against
// the ambiguous answers that allow them; latency per phase and recovery
// time after each fault. ScanAtRest checks I5 on the files a run left.
package checker

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"qkdkms/testcluster/history"
)

// Config tunes the checker.
type Config struct {
	// FetchWindow is how long after healing every issued key must have been
	// fetched (default 30 s).
	FetchWindow time.Duration
	// MinDupBits: distinct key IDs with identical bytes count as a
	// violation only for keys of at least this many bits (default 128;
	// short keys collide by chance).
	MinDupBits int
	// MaxViolations caps the examples listed in Report.Violations (default 20).
	MaxViolations int
}

func (c Config) withDefaults() Config {
	if c.FetchWindow == 0 {
		c.FetchWindow = 30 * time.Second
	}
	if c.MinDupBits == 0 {
		c.MinDupBits = 128
	}
	if c.MaxViolations == 0 {
		c.MaxViolations = 20
	}
	return c
}

// Phase names for latency: before the first fault, from the first fault
// to the last heal, after the last heal.
const (
	PhaseBefore = "before"
	PhaseDuring = "during"
	PhaseAfter  = "after"
)

// LatencyStats summarises successful calls of one phase.
type LatencyStats struct {
	Count int           `json:"count"`
	P50   time.Duration `json:"p50_ns"`
	P99   time.Duration `json:"p99_ns"`
	Max   time.Duration `json:"max_ns"`
}

// Report is the checker's verdict on one history. Every counter named as a
// violation must be 0; ExcessBurned must be 0 (burned ≤ ambiguous).
type Report struct {
	Requests  int `json:"requests"`
	Successes int `json:"successes"`
	Errors    int `json:"errors"`
	Ambiguous int `json:"ambiguous"`
	// Per kind: enc_keys and dec_keys (drain fetches included).
	ByKind map[history.OpKind]KindCounts `json:"by_kind"`

	KeysIssued  int `json:"keys_issued"`
	KeysFetched int `json:"keys_fetched"`

	// Violations of I1/I2 (all must be 0).
	DoubleIssued      int `json:"double_issued"`       // key IDs issued by more than one enc_keys answer
	DuplicateKeyBytes int `json:"duplicate_key_bytes"` // distinct IDs with identical bytes (≥ MinDupBits)
	NotFetchable      int `json:"not_fetchable"`       // issued keys not fetched within FetchWindow after healing
	DecNeverIssued    int `json:"dec_never_issued"`    // dec_keys returned a key ID never issued
	SecondFetch       int `json:"second_fetch"`        // a slave fetched the same key twice
	ByteMismatch      int `json:"byte_mismatch"`       // dec_keys bytes differ from enc_keys bytes

	// LostAfterAmbiguousDec counts issued keys never fetched whose dec_keys
	// call was ambiguous (the KME may have handed them out and erased them;
	// the answer was lost). Reported, not a violation.
	LostAfterAmbiguousDec int `json:"lost_after_ambiguous_dec"`

	// Burned keys versus the keys whose fate the clients could not know:
	// BurnAllowance counts keys asked for by ambiguous enc_keys calls and by
	// enc_keys calls answered 503 (a failed relay burns them: the invariants at the top of the README).
	Burned        int64 `json:"burned"`
	BurnAllowance int   `json:"burn_allowance"`
	ExcessBurned  int64 `json:"excess_burned"`

	// Filled by the scenario runner after the run (not by Check):
	// AtRestHits counts keys found in plaintext (raw, base64 or hex) in a
	// node's data directory or log (I5); FSMDigestMismatch counts sites whose
	// nodes disagree on the FSM digest at the same index; FSMDigest says
	// what the digest check found ("equal", "mismatch", "n/a: ...").
	AtRestHits        int    `json:"at_rest_hits"`
	AtRestKeys        int    `json:"at_rest_keys_scanned"`
	FSMDigestMismatch int    `json:"fsm_digest_mismatch"`
	FSMDigest         string `json:"fsm_digest,omitempty"`
	// Link, for runs whose keys come from the QKD link: sessions committed
	// and aborted, pads used twice, pools identical after healing.
	Link *LinkReport `json:"link,omitempty"`
	// Relay is the trusted-node relay's part (network scenarios).
	Relay *RelayReport `json:"relay,omitempty"`

	Latency map[string]LatencyStats `json:"latency"`
	// Recovery is, per fault, the time from the fault to the end of the
	// first successful enc_keys started after it.
	Recovery    []time.Duration `json:"recovery_ns"`
	MaxRecovery time.Duration   `json:"max_recovery_ns"`
	// HealedAt is when the checker considers the cluster healed.
	HealedAt time.Time `json:"healed_at"`

	Violations []string `json:"violations,omitempty"`
}

// KindCounts are the outcome counts of one kind of call.
type KindCounts struct {
	Requests  int `json:"requests"`
	Successes int `json:"successes"`
	Errors    int `json:"errors"`
	Ambiguous int `json:"ambiguous"`
}

// OK reports whether every invariant counter is 0.
func (r *Report) OK() bool {
	return r.DoubleIssued == 0 && r.DuplicateKeyBytes == 0 && r.NotFetchable == 0 &&
		r.DecNeverIssued == 0 && r.SecondFetch == 0 && r.ByteMismatch == 0 && r.ExcessBurned == 0 &&
		r.AtRestHits == 0 && r.FSMDigestMismatch == 0 && r.Link.OK() && r.Relay.OK()
}

// Check runs the checker over a history.
func Check(h *history.History, cfg Config) *Report {
	cfg = cfg.withDefaults()
	ops := h.Ops()
	events := h.Events()
	r := &Report{ByKind: map[history.OpKind]KindCounts{}, Latency: map[string]LatencyStats{}, Burned: h.Burned}
	violate := func(format string, a ...any) {
		if len(r.Violations) < cfg.MaxViolations {
			r.Violations = append(r.Violations, fmt.Sprintf(format, a...))
		}
	}

	// Fault window.
	var firstFault, lastHeal, lastFault time.Time
	var faults []time.Time
	for _, e := range events {
		switch e.Kind {
		case history.EventFault:
			if firstFault.IsZero() {
				firstFault = e.At
			}
			lastFault = e.At
			faults = append(faults, e.At)
		case history.EventHeal:
			lastHeal = e.At
		}
	}
	switch {
	case !lastHeal.IsZero() && !lastHeal.Before(lastFault):
		r.HealedAt = lastHeal
	case !lastFault.IsZero():
		r.HealedAt = lastFault
	default:
		// No fault: the run's end (last non-drain op) counts as healed.
		for _, o := range ops {
			if !o.Drain && o.End.After(r.HealedAt) {
				r.HealedAt = o.End
			}
		}
	}
	deadline := r.HealedAt.Add(cfg.FetchWindow)

	// Counts.
	for _, o := range ops {
		k := r.ByKind[o.Kind]
		k.Requests++
		r.Requests++
		switch o.Outcome {
		case history.OK:
			k.Successes++
			r.Successes++
		case history.Ambiguous:
			k.Ambiguous++
			r.Ambiguous++
		default:
			k.Errors++
			r.Errors++
		}
		r.ByKind[o.Kind] = k
	}

	// Issued keys (successful enc_keys).
	type issued struct {
		rec history.KeyRecord
		op  int
	}
	issuedBy := map[string]issued{}
	byDigest := map[string]string{}
	for _, o := range ops {
		if o.Kind != history.OpEnc {
			continue
		}
		if o.Outcome == history.Ambiguous || (o.Outcome == history.Failed && o.Status >= 500) {
			r.BurnAllowance += max(o.Number, 1)
		}
		if o.Outcome != history.OK {
			continue
		}
		for _, k := range o.Keys {
			r.KeysIssued++
			if prev, dup := issuedBy[k.ID]; dup {
				r.DoubleIssued++
				violate("key %s issued twice (ops %d and %d)", k.ID, prev.op, o.Seq)
				continue
			}
			issuedBy[k.ID] = issued{k, o.Seq}
			if k.Bits >= cfg.MinDupBits {
				if other, dup := byDigest[k.Digest]; dup {
					r.DuplicateKeyBytes++
					violate("keys %s and %s carry identical bytes", other, k.ID)
				} else {
					byDigest[k.Digest] = k.ID
				}
			}
		}
	}

	// Fetches (successful dec_keys).
	fetchedBy := map[string]time.Time{} // key ID → first successful fetch end
	seen := map[[2]string]int{}         // (key ID, slave) → op
	for _, o := range ops {
		if o.Kind != history.OpDec || o.Outcome != history.OK {
			continue
		}
		for _, k := range o.Keys {
			r.KeysFetched++
			iss, ok := issuedBy[k.ID]
			if !ok {
				r.DecNeverIssued++
				violate("dec_keys op %d returned key %s that no enc_keys answer issued", o.Seq, k.ID)
				continue
			}
			if iss.rec.Digest != k.Digest || iss.rec.Bits != k.Bits {
				r.ByteMismatch++
				violate("key %s: dec_keys op %d bytes differ from enc_keys op %d", k.ID, o.Seq, iss.op)
			}
			sk := [2]string{k.ID, o.Slave}
			if prev, dup := seen[sk]; dup {
				r.SecondFetch++
				violate("key %s fetched twice by %s (ops %d and %d)", k.ID, o.Slave, prev, o.Seq)
			} else {
				seen[sk] = o.Seq
			}
			if t, ok := fetchedBy[k.ID]; !ok || o.End.Before(t) {
				fetchedBy[k.ID] = o.End
			}
		}
	}
	ambiguousDec := map[string]bool{}
	for _, o := range ops {
		if o.Kind == history.OpDec && o.Outcome == history.Ambiguous {
			for _, id := range o.KeyIDs {
				ambiguousDec[id] = true
			}
		}
	}
	ids := make([]string, 0, len(issuedBy))
	for id := range issuedBy {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		t, ok := fetchedBy[id]
		if !ok && ambiguousDec[id] {
			r.LostAfterAmbiguousDec++
			continue
		}
		if !ok || t.After(deadline) {
			r.NotFetchable++
			if ok {
				violate("key %s fetched only %v after healing", id, t.Sub(r.HealedAt).Round(time.Millisecond))
			} else {
				violate("key %s (enc_keys op %d) never fetched", id, issuedBy[id].op)
			}
		}
	}

	if excess := r.Burned - int64(r.BurnAllowance); excess > 0 {
		r.ExcessBurned = excess
		violate("%d keys burned, only %d keys were in ambiguous or 503 enc_keys calls", r.Burned, r.BurnAllowance)
	}

	// Latency per phase (successful non-drain calls).
	lat := map[string][]time.Duration{}
	for _, o := range ops {
		if o.Outcome != history.OK || o.Drain {
			continue
		}
		p := PhaseBefore
		switch {
		case firstFault.IsZero() || o.Start.Before(firstFault):
		case o.Start.Before(r.HealedAt):
			p = PhaseDuring
		default:
			p = PhaseAfter
		}
		lat[p] = append(lat[p], o.Latency())
	}
	for p, ds := range lat {
		r.Latency[p] = latencyStats(ds)
	}

	// Recovery after each fault.
	for _, f := range faults {
		rec := time.Duration(-1)
		for _, o := range ops {
			if o.Kind == history.OpEnc && o.Outcome == history.OK && !o.Start.Before(f) {
				if d := o.End.Sub(f); rec < 0 || d < rec {
					rec = d
				}
			}
		}
		r.Recovery = append(r.Recovery, rec)
		if rec > r.MaxRecovery {
			r.MaxRecovery = rec
		}
	}
	return r
}

func latencyStats(ds []time.Duration) LatencyStats {
	if len(ds) == 0 {
		return LatencyStats{}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return LatencyStats{Count: len(ds), P50: percentile(ds, 0.50), P99: percentile(ds, 0.99), Max: ds[len(ds)-1]}
}

// percentile of sorted ds, nearest rank.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(ds)))) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(ds) {
		i = len(ds) - 1
	}
	return ds[i]
}

// Markdown renders the report as a small table.
func (r *Report) Markdown(title string) string {
	var b strings.Builder
	verdict := "PASS"
	if !r.OK() {
		verdict = "FAIL"
	}
	fmt.Fprintf(&b, "### %s — %s\n\n", title, verdict)
	b.WriteString("| counter | value |\n|---|---|\n")
	row := func(k string, v any) { fmt.Fprintf(&b, "| %s | %v |\n", k, v) }
	row("requests", r.Requests)
	row("successes", r.Successes)
	row("errors", r.Errors)
	row("ambiguous", r.Ambiguous)
	row("keys issued / fetched", fmt.Sprintf("%d / %d", r.KeysIssued, r.KeysFetched))
	row("double-issued key IDs", r.DoubleIssued)
	row("distinct IDs, identical bytes", r.DuplicateKeyBytes)
	row("issued, not fetchable 30 s after healing", r.NotFetchable)
	row("dec_keys for never-issued keys", r.DecNeverIssued)
	row("second successful fetches", r.SecondFetch)
	row("byte mismatches", r.ByteMismatch)
	if r.LostAfterAmbiguousDec > 0 {
		row("unfetched after an ambiguous dec_keys (not a violation)", r.LostAfterAmbiguousDec)
	}
	row("burned (allowance: ambiguous + 503 keys)", fmt.Sprintf("%d (≤ %d)", r.Burned, r.BurnAllowance))
	if r.AtRestKeys > 0 {
		row("keys in plaintext at rest (keys scanned)", fmt.Sprintf("%d (%d)", r.AtRestHits, r.AtRestKeys))
	}
	if r.FSMDigest != "" {
		row("FSM digests after healing", r.FSMDigest)
	}
	if l := r.Link; l != nil {
		sites := make([]string, 0, len(l.Committed))
		for s := range l.Committed {
			sites = append(sites, s)
		}
		sort.Strings(sites)
		for _, s := range sites {
			row("link sessions committed / aborted at "+s+" (leaders)", fmt.Sprintf("%d / %d (%d)", l.Committed[s], l.Aborted[s], l.Leaders[s]))
		}
		row("link ("+l.Driver+"): pads used twice", l.PadReuse)
		row("link: pools differ after healing", fmt.Sprintf("%d %v", l.PoolsDiffer, l.Pools))
	}
	if rl := r.Relay; rl != nil {
		row("relay: blocks delivered / burned", fmt.Sprintf("%d / %d", rl.Delivered, rl.Burned))
		row("relay: key consumed by senders / used by delivered hops (bytes)", fmt.Sprintf("%d / %d", rl.SentBytes, rl.HopBytes))
		row("relay: receiver ahead of sender / key used twice / unexplained waste", fmt.Sprintf("%d / %d / %d", rl.ReceiverAhead, rl.Underused, rl.Waste))
		row("relay: pools differ after healing", fmt.Sprintf("%d %v", rl.PoolsDiffer, rl.Pools))
	}
	for _, p := range []string{PhaseBefore, PhaseDuring, PhaseAfter} {
		if l, ok := r.Latency[p]; ok {
			row("latency "+p+" p50 / p99 (n)", fmt.Sprintf("%v / %v (%d)", l.P50.Round(10*time.Microsecond), l.P99.Round(10*time.Microsecond), l.Count))
		}
	}
	if len(r.Recovery) > 0 {
		row("recovery max (faults)", fmt.Sprintf("%v (%d)", r.MaxRecovery.Round(time.Millisecond), len(r.Recovery)))
	}
	for _, v := range r.Violations {
		fmt.Fprintf(&b, "\n- %s", v)
	}
	b.WriteString("\n")
	return b.String()
}
