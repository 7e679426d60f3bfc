package raftstore

import (
	"fmt"
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
	holes      []hole // ranges behind carve skipped by relays, reserved for late ones
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

	applied  uint64 // commands applied (batch members count singly)
	restores uint64 // snapshots restored (at start or installed from the leader)
	batches  uint64
}

func newFSM() *fsm { return &fsm{st: newState()} }

var _ raft.FSM = (*fsm)(nil)

// Apply applies one log entry. Undecodable commands panic: this is the only
// panic in the package and means the log holds something this binary cannot
// interpret, which must stop the node rather than let replicas diverge.
func (f *fsm) Apply(l *raft.Log) any {
	t, body, err := decodeCmd(l.Data)
	if err != nil {
		panic(fmt.Sprintf("raftstore: FATAL: log index %d: %v", l.Index, err))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.index = l.Index
	if t == cmdBatch {
		b := body.(*batchCmd)
		out := make([]result, len(b.Cmds))
		for i, raw := range b.Cmds {
			st, sb, err := decodeCmd(raw)
			if err != nil || st == cmdBatch {
				panic(fmt.Sprintf("raftstore: FATAL: log index %d batch member %d: %v (type %s)", l.Index, i, err, st))
			}
			out[i] = f.apply(st, sb)
		}
		f.batches++
		return out
	}
	return f.apply(t, body)
}

type applyFunc func(st *fsmState, body any) result

var dispatch = map[cmdType]applyFunc{
	cmdRegister: func(st *fsmState, b any) result { return st.register(b.(*registerCmd)) },
	cmdUpdate:   func(st *fsmState, b any) result { return st.update(b.(*registerCmd)) },
	cmdDelete:   func(st *fsmState, b any) result { return st.deleteConn(b.(*deleteCmd)) },
	cmdAddBlock: func(st *fsmState, b any) result { return st.addBlock(b.(*addBlockCmd)) },
	cmdIssue:    func(st *fsmState, b any) result { return st.issue(b.(*issueCmd)) },
	cmdRecord:   func(st *fsmState, b any) result { return st.record(b.(*recordCmd)) },
	cmdConsume:  func(st *fsmState, b any) result { return st.consume(b.(*consumeCmd)) },
	cmdBurn:     func(st *fsmState, b any) result { return st.burn(b.(*burnCmd)) },
	cmdDrop:     func(st *fsmState, b any) result { return st.dropLast(b.(*dropCmd)) },
	cmdPads:     func(st *fsmState, b any) result { return st.pads(b.(*padsCmd)) },
	cmdPlugin:   func(st *fsmState, b any) result { return st.plugin(b.(*pluginCmd)) },
}

func cmdAt(body any) int64 {
	switch c := body.(type) {
	case *registerCmd:
		return c.At
	case *deleteCmd:
		return c.At
	case *addBlockCmd:
		return c.At
	case *issueCmd:
		return c.At
	case *recordCmd:
		return c.At
	case *consumeCmd:
		return c.At
	case *burnCmd:
		return c.At
	case *dropCmd:
		return c.At
	case *padsCmd:
		return c.At
	case *pluginCmd:
		return c.At
	}
	return 0
}

func (f *fsm) apply(t cmdType, body any) result {
	fn, ok := dispatch[t]
	if !ok {
		panic(fmt.Sprintf("raftstore: FATAL: no handler for command %s", t))
	}
	f.applied++
	st := f.st
	r := fn(st, body)
	if r.err != nil {
		// A failed command changes nothing, not even the clock: its retry
		// is evaluated afresh (only successes must never apply twice).
		return r
	}
	if at := cmdAt(body); at > st.now {
		st.now = at
	}
	st.evict()
	return r
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
	}
}
