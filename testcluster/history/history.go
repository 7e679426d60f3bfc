// Package history is the record of a testcluster run: every ETSI call an
// SAE made (with its outcome, node, latency and the digests of the keys it
// got) and every fault and heal, in memory and as history.json. The
// workload writes it; the checker and the report read it. Key bytes never
// enter it (invariant I5, README).
package history

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"
)

// OpKind is the ETSI call an operation made.
type OpKind string

// Operation kinds.
const (
	OpEnc OpKind = "enc_keys"
	OpDec OpKind = "dec_keys"
)

// Outcome classifies a recorded call.
type Outcome string

// Outcomes. Ambiguous means the request may have reached the KME but no
// answer came back (timeout, connection reset after sending, unreadable
// 200 body): the KME may or may not have acted on it.
const (
	OK        Outcome = "ok"
	Failed    Outcome = "fail"
	Ambiguous Outcome = "ambiguous"
)

// KeyRecord is one key seen by a client: its ID, its size and a digest of
// its bytes. Key bytes themselves never enter a history (invariant I5, README).
type KeyRecord struct {
	ID     string `json:"key_ID"`
	Bits   int    `json:"bits"`
	Digest string `json:"sha256"`
}

// NewKeyRecord digests key bytes.
func NewKeyRecord(id string, key []byte) KeyRecord {
	d := sha256.Sum256(key)
	return KeyRecord{ID: id, Bits: 8 * len(key), Digest: hex.EncodeToString(d[:])}
}

// Op is one recorded call.
type Op struct {
	Seq     int         `json:"seq"`
	Client  string      `json:"client"`
	Kind    OpKind      `json:"kind"`
	Node    string      `json:"node"`
	Master  string      `json:"master"`
	Slave   string      `json:"slave"`
	Number  int         `json:"number,omitempty"`  // enc: keys asked for
	KeyIDs  []string    `json:"key_IDs,omitempty"` // dec: IDs asked for
	Start   time.Time   `json:"start"`
	End     time.Time   `json:"end"`
	Outcome Outcome     `json:"outcome"`
	Status  int         `json:"status,omitempty"` // HTTP status when one came back
	Err     string      `json:"error,omitempty"`
	Keys    []KeyRecord `json:"keys,omitempty"` // keys returned
	// Drain marks the verification fetches made after healing.
	Drain bool `json:"drain,omitempty"`
}

// Latency is the call's duration.
func (o Op) Latency() time.Duration { return o.End.Sub(o.Start) }

// Event marks something that happened to the cluster (a fault and its end).
type Event struct {
	At   time.Time `json:"at"`
	Kind string    `json:"kind"` // fault, heal, note
	What string    `json:"what"`
}

// Event kinds.
const (
	EventFault = "fault"
	EventHeal  = "heal"
	EventNote  = "note"
)

// History is the record of a run. Safe for concurrent use.
type History struct {
	mu     sync.Mutex
	ops    []Op
	events []Event
	// Burned is the master site's burned-key count at the end of the run
	// minus the count at the start (filled by the caller).
	Burned int64
	// Start and End of the run.
	Start, End time.Time
}

// New starts a history now.
func New() *History { return &History{Start: time.Now()} }

// Add records an op and returns its sequence number.
func (h *History) Add(o Op) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	o.Seq = len(h.ops)
	h.ops = append(h.ops, o)
	return o.Seq
}

// Mark records an event now.
func (h *History) Mark(kind, what string) {
	h.MarkAt(time.Now(), kind, what)
}

// MarkAt records an event at t.
func (h *History) MarkAt(t time.Time, kind, what string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, Event{At: t, Kind: kind, What: what})
}

// Ops returns a copy of the recorded ops ordered by start time.
func (h *History) Ops() []Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := append([]Op(nil), h.ops...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// Events returns a copy of the events ordered by time.
func (h *History) Events() []Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := append([]Event(nil), h.events...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out
}

type historyFile struct {
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	Burned int64     `json:"burned"`
	Events []Event   `json:"events"`
	Ops    []Op      `json:"ops"`
}

// WriteFile stores the history as JSON (digests only, no key bytes).
func (h *History) WriteFile(path string) error {
	b, err := json.MarshalIndent(historyFile{Start: h.Start, End: h.End, Burned: h.Burned, Events: h.Events(), Ops: h.Ops()}, "", " ")
	if err != nil {
		return fmt.Errorf("history: history: %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("history: history: %w", err)
	}
	return nil
}

// Read loads a history written by WriteFile.
func Read(path string) (*History, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("history: history: %w", err)
	}
	var f historyFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("history: history %s: %w", path, err)
	}
	return &History{ops: f.Ops, events: f.Events, Burned: f.Burned, Start: f.Start, End: f.End}, nil
}
