package raftstore

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Request table bounds. They are part of the replicated state machine's
// definition and must be identical on every node: an entry is evicted when
// the table holds more than reqTableCap entries or when it is older than
// reqTableAge measured on the leader clocks carried in the commands (the
// largest At seen so far), never on the local clock.
const (
	reqTableCap = 100_000
	reqTableAge = 2 * time.Minute
	recentCap   = 1024 // dropped block IDs remembered per connection
)

type keyState uint8

const (
	kIssued keyState = iota // fetchable (slave role) or handed to the master (master role)
	kErased                 // fetched by every slave (slave) / retry window over (master)
	kBurned
)

const (
	roleMaster uint8 = 1 // carved here by IssueKeys
	roleSlave  uint8 = 2 // recorded here by RecordAssignment
)

// blockRec is one sealed block of a pool. It is immutable once created
// except for refs, so results may keep pointers to it outside the lock.
type blockRec struct {
	id      string
	start   int64 // bit offset of the first bit in the pool stream
	bytes   int
	wrapped []byte
	sealed  []byte
	refs    int // live key records covering this block
}

func (b *blockRec) end() int64 { return b.start + int64(b.bytes)*8 }

type connState struct {
	conn       Connection
	blocks     []*blockRec // ordered by start; dead blocks are dropped
	recent     []string    // IDs of dropped blocks, to refuse re-adding them
	end        int64       // stream end: bits ever added
	carve      int64       // bits before this offset are assigned or burned
	live       int64       // keys issued and not erased/burned
	burned     int64
	erased     int64
	added      int64
	burnedBits int64
	holes      []hole        // ranges behind carve skipped by relays, reserved for late ones
	importing  string        // block whose import at both sites is half done (cluster version 2)
	pending    *pendingRelay // relay block on its way from this source site (cluster version 4)
	relay      RelayCounts   // relayed blocks this source site ended (cluster version 4)
}

// hole is a range of the pool stream before the carve position that no
// recorded assignment covers yet (slave site): the master skipped it
// (burned it) or its relay is still on the way. A late assignment may fill
// it; after reqTableAge (leader clock) it is burned.
type hole struct {
	start, end int64
	at         int64
}

type keyRec struct {
	id        string
	conn      string
	role      uint8
	master    string
	named     []string // every slave named at issue
	pending   []string // slaves that have not fetched yet (never mutated in place)
	off       int64
	bits      int
	issuedAt  int64
	requestID string
	state     keyState
	pins      int // request-table entries that may return this key again
}

type reqEntry struct {
	key    string
	at     int64
	code   int
	caller string
	keyIDs []string // keys pinned by this entry (issue / consume results)
}

type fsmState struct {
	conns map[string]*connState
	keys  map[string]*keyRec
	reqs  map[string]*reqEntry
	links map[string]*linkState
	// plugin selection: step -> name; installed modules by name
	active  map[string]string
	plugins map[string]*PluginModule
	order   []*reqEntry // FIFO of reqs
	now     int64       // largest command At seen
	version uint8       // cluster version; 0 is 1 (see clusterVersion)
	// restored lists the peer KMEs a site seeded from a backup has not
	// reconciled with yet (backup.go); empty on every other site.
	restored []string
}

func newState() *fsmState {
	return &fsmState{
		conns:   map[string]*connState{},
		keys:    map[string]*keyRec{},
		reqs:    map[string]*reqEntry{},
		links:   map[string]*linkState{},
		active:  map[string]string{},
		plugins: map[string]*PluginModule{},
	}
}

// seg is part of a key inside one block (byte offsets in the block).
type seg struct {
	b      *blockRec
	off, n int
}

// keyOut is a key located in sealed blocks; the caller decrypts it.
type keyOut struct {
	id     string
	connID string
	segs   []seg
}

// result is what Apply returns for one command. Key material is only
// referenced (sealed), never decrypted inside the FSM.
type result struct {
	err        error
	keys       []keyOut
	assignment *Assignment
}

// fsm is the site state machine.
type fsm struct {
	mu    sync.RWMutex
	st    *fsmState
	index uint64

	// maxVersion limits the registry to the entries of cluster versions up
	// to it (MaxVersion; lower in tests that play an older binary).
	maxVersion uint8
	log        *slog.Logger
	// broken is set when Apply met an entry it cannot apply; onBroken
	// runs (in its own goroutine) when that happens.
	broken   error
	onBroken func()

	applied  uint64 // commands applied (batch members count singly)
	restores uint64 // snapshots restored (at start or installed from the leader)
	batches  uint64
}

func newFSM() *fsm { return newFSMMax(MaxVersion, slog.Default()) }

func newFSMMax(maxVersion uint8, log *slog.Logger) *fsm {
	return &fsm{st: newState(), maxVersion: maxVersion, log: log}
}

var _ raft.FSM = (*fsm)(nil)

// Apply applies one log entry. An entry this binary cannot decode (an
// unknown command type or version, or a malformed body) does not panic:
// the FSM stops applying from that index on and returns ErrUpgradeRequired
// for it and every later entry, logs at error level, and the store refuses
// to serve and takes no snapshot until the node runs a binary that knows
// the command (docs/RAFT-FORMAT.md "Unknown commands" gives the reasoning).
// A batch is decoded whole before any member applies.
func (f *fsm) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.broken != nil {
		return result{err: f.broken}
	}
	e, body, err := decodeCmdMax(l.Data, f.maxVersion)
	if err != nil {
		return f.breakAt(l.Index, err)
	}
	if e.typ != cmdBatch {
		if r, bad := f.checkRaise(l.Index, e, body); bad {
			return r
		}
		f.index = l.Index
		return f.apply(e, body)
	}
	b := body.(*batchCmd)
	es := make([]*cmdEntry, len(b.Cmds))
	bodies := make([]any, len(b.Cmds))
	for i, raw := range b.Cmds {
		me, mb, err := decodeCmdMax(raw, f.maxVersion)
		if err == nil && me.typ == cmdBatch {
			err = fmt.Errorf("%w: batch inside a batch", errUndecodable)
		}
		if err != nil {
			return f.breakAt(l.Index, fmt.Errorf("batch member %d: %w", i, err))
		}
		if r, bad := f.checkRaise(l.Index, me, mb); bad {
			return r
		}
		es[i], bodies[i] = me, mb
	}
	f.index = l.Index
	out := make([]result, len(es))
	for i := range es {
		out[i] = f.apply(es[i], bodies[i])
	}
	f.batches++
	return out
}

// checkRaise breaks the FSM on a raise beyond what this binary supports:
// the entry is known but the format it enables is not.
func (f *fsm) checkRaise(index uint64, e *cmdEntry, body any) (result, bool) {
	if c, ok := body.(*clusterVersionCmd); ok && e.raise && c.Version > f.maxVersion {
		return f.breakAt(index, fmt.Errorf("cluster version %d above this binary's %d", c.Version, f.maxVersion)), true
	}
	return result{}, false
}

// breakAt stops the FSM at a log entry it cannot apply (under f.mu).
func (f *fsm) breakAt(index uint64, err error) result {
	f.broken = fmt.Errorf("%w: log index %d: %w", ErrUpgradeRequired, index, err)
	f.log.Error("cannot apply a log entry: this node refuses to serve until it runs a binary that knows it",
		"index", index, "applied_index", f.index, "max_cluster_version", f.maxVersion, "err", err)
	if f.onBroken != nil {
		go f.onBroken()
	}
	return result{err: f.broken}
}

// brokenErr is ErrUpgradeRequired (wrapped) once Apply met an entry it
// cannot apply, else nil.
func (f *fsm) brokenErr() error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.broken
}

func (f *fsm) clusterVersion() uint8 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.clusterVersion()
}

func (f *fsm) apply(e *cmdEntry, body any) result {
	f.applied++
	st := f.st
	if err := st.gate(body); err != nil {
		return result{err: err}
	}
	r := e.apply(st, body)
	if r.err != nil {
		// A failed command changes nothing, not even the clock: its retry
		// is evaluated afresh (only successes must never apply twice).
		return r
	}
	if at := e.at(body); at > st.now {
		st.now = at
	}
	st.evict()
	return r
}

// clusterVersion is the replicated cluster version; state from before the
// registry (no version recorded) is version 1.
func (st *fsmState) clusterVersion() uint8 { return max(1, st.version) }

func (st *fsmState) raiseVersion(c *clusterVersionCmd) result {
	if c.Version == 0 || c.Version > MaxVersion {
		return invalid("cluster version %d", c.Version)
	}
	if c.Version > st.clusterVersion() {
		st.version = c.Version
	}
	return result{}
}

func invalid(format string, a ...any) result {
	return result{err: fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))}
}

func (st *fsmState) remember(key string, at int64, code int, caller string, keyIDs []string) {
	e := &reqEntry{key: key, at: at, code: code, caller: caller, keyIDs: keyIDs}
	st.reqs[key] = e
	st.order = append(st.order, e)
	for _, id := range keyIDs {
		if k, ok := st.keys[id]; ok {
			k.pins++
		}
	}
}

// evict drops request-table entries beyond the cap or older than the age
// limit, unpinning their keys. Master-side keys whose retry window ended are
// erased here.
func (st *fsmState) evict() {
	for _, cs := range st.conns {
		cs.burnOldHoles(st.now)
	}
	n := 0
	for n < len(st.order) && (len(st.order)-n > reqTableCap || st.order[n].at < st.now-int64(reqTableAge)) {
		e := st.order[n]
		delete(st.reqs, e.key)
		for _, id := range e.keyIDs {
			k, ok := st.keys[id]
			if !ok {
				continue
			}
			k.pins--
			if k.pins == 0 && k.role == roleMaster && k.state == kIssued {
				k.state = kErased
				if cs, ok := st.conns[k.conn]; ok {
					cs.live--
					cs.erased++
				}
			}
			st.finalize(k)
		}
		n++
	}
	if n > 0 {
		clear(st.order[:n])
		st.order = st.order[n:]
		if cap(st.order) > 1024 && len(st.order) < cap(st.order)/4 {
			st.order = append([]*reqEntry(nil), st.order...)
		}
	}
}

func dupOrEmpty(ids []string) bool {
	seen := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		if id == "" {
			return true
		}
		if _, ok := seen[id]; ok {
			return true
		}
		seen[id] = struct{}{}
	}
	return false
}

func (f *fsm) stats() map[string]string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var blocks, pinned int
	for _, cs := range f.st.conns {
		blocks += len(cs.blocks)
	}
	for _, k := range f.st.keys {
		if k.pins > 0 {
			pinned++
		}
	}
	return map[string]string{
		"fsm_index":        fmt.Sprint(f.index),
		"fsm_connections":  fmt.Sprint(len(f.st.conns)),
		"fsm_blocks":       fmt.Sprint(blocks),
		"fsm_keys":         fmt.Sprint(len(f.st.keys)),
		"fsm_keys_pinned":  fmt.Sprint(pinned),
		"fsm_requests":     fmt.Sprint(len(f.st.reqs)),
		"fsm_applied_cmds": fmt.Sprint(f.applied),
		"fsm_batches":      fmt.Sprint(f.batches),
		"fsm_restores":     fmt.Sprint(f.restores),
		"cluster_version":  fmt.Sprint(f.st.clusterVersion()),
		"max_version":      fmt.Sprint(f.maxVersion),
		"upgrade_required": fmt.Sprint(f.broken != nil),
	}
}
