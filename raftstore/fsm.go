package raftstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
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

func validSAE(s string) bool { return s != "" && !strings.Contains(s, "|") && len(s) <= 1024 }

func validateConn(c Connection) error {
	switch {
	case !validSAE(c.MasterSAE) || !validSAE(c.SlaveSAE):
		return fmt.Errorf("%w: SAE IDs must be non-empty and contain no '|'", ErrInvalid)
	case c.MasterSAE == c.SlaveSAE:
		return fmt.Errorf("%w: master and slave SAE are the same", ErrInvalid)
	case c.KeySize <= 0 || c.KeySize%8 != 0:
		return fmt.Errorf("%w: key_size %d must be a positive multiple of 8", ErrInvalid, c.KeySize)
	case c.MaxKeyCount < 0 || c.MaxKeyPerRequest < 0 || c.MaxSAEIDCount < 0 || c.MinKeySize < 0 || c.MaxKeySize < 0:
		return fmt.Errorf("%w: negative limit", ErrInvalid)
	case c.MinKeySize%8 != 0 || c.MaxKeySize%8 != 0:
		return fmt.Errorf("%w: min/max key size must be multiples of 8", ErrInvalid)
	case c.MinKeySize > 0 && c.KeySize < c.MinKeySize, c.MaxKeySize > 0 && c.KeySize > c.MaxKeySize:
		return fmt.Errorf("%w: key_size outside min/max", ErrInvalid)
	}
	return nil
}

func (st *fsmState) register(c *registerCmd) result {
	if err := validateConn(c.Conn); err != nil {
		return result{err: err}
	}
	id := c.Conn.ID()
	if cs, ok := st.conns[id]; ok {
		if cs.conn == c.Conn {
			return result{}
		}
		return result{err: fmt.Errorf("%w: %s", ErrConnectionExists, id)}
	}
	st.conns[id] = &connState{conn: c.Conn}
	return result{}
}

func (st *fsmState) update(c *registerCmd) result {
	if err := validateConn(c.Conn); err != nil {
		return result{err: err}
	}
	cs, ok := st.conns[c.Conn.ID()]
	if !ok {
		return result{err: fmt.Errorf("%w: %s", ErrConnectionNotFound, c.Conn.ID())}
	}
	cs.conn = c.Conn
	return result{}
}

func (st *fsmState) deleteConn(c *deleteCmd) result {
	id := Connection{MasterSAE: c.Master, SlaveSAE: c.Slave}.ID()
	if _, ok := st.conns[id]; !ok {
		return result{err: fmt.Errorf("%w: %s", ErrConnectionNotFound, id)}
	}
	// Every key of the connection becomes unfetchable; its blocks go with
	// the connection.
	for kid, k := range st.keys {
		if k.conn == id {
			k.state = kBurned
			delete(st.keys, kid)
		}
	}
	delete(st.conns, id)
	return result{}
}

const wrappedLen = 12 + 32 + gcmOverhead

func (st *fsmState) addBlock(c *addBlockCmd) result {
	cs, ok := st.conns[c.ConnID]
	if !ok {
		return result{err: fmt.Errorf("%w: %s", ErrConnectionNotFound, c.ConnID)}
	}
	if c.BlockID == "" || len(c.BlockID) > 256 {
		return invalid("block ID must be 1..256 bytes")
	}
	if c.LinkPeer == "" {
		if c.Bytes <= 0 || c.AuthBytes != 0 || c.AuthWrapped != nil || c.AuthSealed != nil {
			return invalid("block %s: no key bits", c.BlockID)
		}
	} else {
		if c.Bytes < 0 || c.AuthBytes < 0 || c.Bytes+c.AuthBytes == 0 {
			return invalid("link block %s: no key bits", c.BlockID)
		}
		if c.AuthBytes > 0 && (len(c.AuthSealed) != sealedLen(c.AuthBytes) || len(c.AuthWrapped) != wrappedLen) {
			return invalid("link block %s: malformed pad ciphertext", c.BlockID)
		}
		if c.AuthBytes == 0 && (c.AuthSealed != nil || c.AuthWrapped != nil) {
			return invalid("link block %s: malformed pad ciphertext", c.BlockID)
		}
		if ls := st.links[c.LinkPeer]; ls != nil && (ls.last == c.BlockID || ls.prev == c.BlockID) {
			return result{err: fmt.Errorf("%w: %s", ErrBlockExists, c.BlockID)}
		}
	}
	if c.Bytes > 0 && (len(c.Sealed) != sealedLen(c.Bytes) || len(c.Wrapped) != wrappedLen) {
		return invalid("block %s: malformed ciphertext", c.BlockID)
	}
	if c.Bytes == 0 && (c.Sealed != nil || c.Wrapped != nil) {
		return invalid("block %s: malformed ciphertext", c.BlockID)
	}
	for _, b := range cs.blocks {
		if b.id == c.BlockID {
			return result{err: fmt.Errorf("%w: %s", ErrBlockExists, c.BlockID)}
		}
	}
	if slices.Contains(cs.recent, c.BlockID) {
		return result{err: fmt.Errorf("%w: %s", ErrBlockExists, c.BlockID)}
	}
	if c.Bytes > 0 {
		cs.blocks = append(cs.blocks, &blockRec{id: c.BlockID, start: cs.end, bytes: c.Bytes, wrapped: c.Wrapped, sealed: c.Sealed})
		cs.end += int64(c.Bytes) * 8
		cs.added++
	}
	if c.LinkPeer != "" {
		st.linkAdd(c)
	}
	return result{}
}

// covering returns the indexes [i, j) of blocks covering [off, off+bits).
func (cs *connState) covering(off int64, bits int) (int, int) {
	end := off + int64(bits)
	i := sort.Search(len(cs.blocks), func(i int) bool { return cs.blocks[i].end() > off })
	j := i
	for j < len(cs.blocks) && cs.blocks[j].start < end {
		j++
	}
	return i, j
}

func (st *fsmState) acquire(k *keyRec) {
	cs := st.conns[k.conn]
	i, j := cs.covering(k.off, k.bits)
	for ; i < j; i++ {
		cs.blocks[i].refs++
	}
}

func (st *fsmState) release(k *keyRec) {
	cs, ok := st.conns[k.conn]
	if !ok {
		return
	}
	i, j := cs.covering(k.off, k.bits)
	for ; i < j; i++ {
		cs.blocks[i].refs--
	}
	cs.prune()
}

// prune drops blocks entirely behind the carve position that no live key
// covers. Their ciphertext leaves the state (and the next snapshot).
func (cs *connState) prune() {
	kept := cs.blocks[:0]
	for _, b := range cs.blocks {
		if b.end() <= cs.carve && b.refs <= 0 && !cs.overlapsHole(b.start, b.end()) {
			cs.recent = append(cs.recent, b.id)
			continue
		}
		kept = append(kept, b)
	}
	clear(cs.blocks[len(kept):])
	cs.blocks = kept
	if n := len(cs.recent); n > recentCap {
		cs.recent = append([]string(nil), cs.recent[n-recentCap:]...)
	}
}

func (cs *connState) overlapsHole(start, end int64) bool {
	for _, h := range cs.holes {
		if h.start < end && start < h.end {
			return true
		}
	}
	return false
}

// finalize removes a key that is no longer fetchable and no longer pinned.
func (st *fsmState) finalize(k *keyRec) {
	if k.state == kIssued || k.pins > 0 {
		return
	}
	if cur, ok := st.keys[k.id]; ok && cur == k {
		delete(st.keys, k.id)
		st.release(k)
	}
}

func (st *fsmState) outKeys(ks []*keyRec) []keyOut {
	out := make([]keyOut, 0, len(ks))
	for _, k := range ks {
		cs := st.conns[k.conn]
		ko := keyOut{id: k.id, connID: k.conn}
		i, j := cs.covering(k.off, k.bits)
		for ; i < j; i++ {
			b := cs.blocks[i]
			from := max(k.off, b.start)
			to := min(k.off+int64(k.bits), b.end())
			ko.segs = append(ko.segs, seg{b: b, off: int((from - b.start) / 8), n: int((to - from) / 8)})
		}
		out = append(out, ko)
	}
	return out
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

func (st *fsmState) issued(e *reqEntry) result {
	if e.code != 0 {
		return result{err: codeErr(e.code)}
	}
	ks := make([]*keyRec, 0, len(e.keyIDs))
	for _, id := range e.keyIDs {
		k, ok := st.keys[id]
		if !ok || k.state == kBurned {
			return result{err: fmt.Errorf("%w: retried request's keys were burned", ErrKeyNotFound)}
		}
		ks = append(ks, k)
	}
	k0 := ks[0]
	cs := st.conns[k0.conn]
	a := &Assignment{RequestID: k0.requestID, MasterSAE: cs.conn.MasterSAE, SlaveSAE: cs.conn.SlaveSAE,
		Slaves: slices.Clone(k0.named), IssuedAt: time.Unix(0, k0.issuedAt).UTC()}
	for _, k := range ks {
		a.Keys = append(a.Keys, KeyRange{KeyID: k.id, Offset: k.off, Bits: k.bits})
	}
	return result{keys: st.outKeys(ks), assignment: a}
}

func validSlaves(master, slave string, slaves []string) error {
	if len(slaves) == 0 || slaves[0] != slave {
		return fmt.Errorf("%w: slaves must start with the connection's slave", ErrInvalid)
	}
	if dupOrEmpty(slaves) {
		return fmt.Errorf("%w: duplicate or empty slave SAE ID", ErrInvalid)
	}
	for _, s := range slaves {
		if s == master || !validSAE(s) {
			return fmt.Errorf("%w: slave SAE ID %q not allowed", ErrInvalid, s)
		}
	}
	return nil
}

func (st *fsmState) issue(c *issueCmd) result {
	if c.RequestID == "" {
		return invalid("issue: empty request ID")
	}
	rk := "issue:" + c.RequestID
	if e, ok := st.reqs[rk]; ok {
		return st.issued(e)
	}
	if r := st.issueCheck(c); r.err != nil {
		return r
	}
	id := Connection{MasterSAE: c.MasterSAE, SlaveSAE: c.SlaveSAE}.ID()
	cs := st.conns[id]
	ks := make([]*keyRec, len(c.KeyIDs))
	for i, kid := range c.KeyIDs {
		k := &keyRec{id: kid, conn: id, role: roleMaster, master: c.MasterSAE, named: slices.Clone(c.Slaves),
			pending: slices.Clone(c.Slaves), off: cs.carve, bits: c.Size, issuedAt: c.IssuedAt.UnixNano(),
			requestID: c.RequestID}
		cs.carve += int64(c.Size)
		st.keys[kid] = k
		st.acquire(k)
		ks[i] = k
	}
	cs.live += int64(len(ks))
	cs.prune()
	st.remember(rk, c.At, 0, "", slices.Clone(c.KeyIDs))
	return st.issued(st.reqs[rk])
}

func (st *fsmState) issueCheck(c *issueCmd) result {
	id := Connection{MasterSAE: c.MasterSAE, SlaveSAE: c.SlaveSAE}.ID()
	cs, ok := st.conns[id]
	if !ok {
		return result{err: fmt.Errorf("%w: %s", ErrConnectionNotFound, id)}
	}
	cn := cs.conn
	switch {
	case c.Size <= 0 || c.Size%8 != 0:
		return invalid("size %d must be a positive multiple of 8", c.Size)
	case cn.MinKeySize > 0 && c.Size < cn.MinKeySize, cn.MaxKeySize > 0 && c.Size > cn.MaxKeySize:
		return invalid("size %d outside [%d, %d]", c.Size, cn.MinKeySize, cn.MaxKeySize)
	case len(c.KeyIDs) == 0:
		return invalid("no key IDs")
	case cn.MaxKeyPerRequest > 0 && len(c.KeyIDs) > cn.MaxKeyPerRequest:
		return invalid("%d keys above max_key_per_request %d", len(c.KeyIDs), cn.MaxKeyPerRequest)
	case dupOrEmpty(c.KeyIDs):
		return invalid("duplicate or empty key ID")
	case len(c.Slaves)-1 > cn.MaxSAEIDCount:
		return invalid("%d additional slaves above max_SAE_ID_count %d", len(c.Slaves)-1, cn.MaxSAEIDCount)
	}
	if err := validSlaves(c.MasterSAE, c.SlaveSAE, c.Slaves); err != nil {
		return result{err: err}
	}
	for _, kid := range c.KeyIDs {
		if _, ok := st.keys[kid]; ok {
			return invalid("key ID %s already in use", kid)
		}
	}
	if need := int64(len(c.KeyIDs)) * int64(c.Size); need > cs.end-cs.carve {
		return result{err: fmt.Errorf("%w: need %d bits, pool holds %d", ErrInsufficientKeys, need, cs.end-cs.carve)}
	}
	return result{}
}

func (st *fsmState) record(c *recordCmd) result {
	a := c.Assignment
	if a.RequestID == "" {
		return invalid("record: empty request ID")
	}
	rk := "record:" + a.RequestID
	if e, ok := st.reqs[rk]; ok {
		return result{err: codeErr(e.code)}
	}
	if r := st.recordCheck(&a); r.err != nil {
		return r
	}
	id := Connection{MasterSAE: a.MasterSAE, SlaveSAE: a.SlaveSAE}.ID()
	cs := st.conns[id]
	for _, kr := range a.Keys {
		end := kr.Offset + int64(kr.Bits)
		if end <= cs.carve {
			cs.fill(kr.Offset, end)
		} else {
			if kr.Offset > cs.carve {
				cs.holes = append(cs.holes, hole{start: cs.carve, end: kr.Offset, at: c.At})
			}
			cs.carve = end
		}
		k := &keyRec{id: kr.KeyID, conn: id, role: roleSlave, master: a.MasterSAE, named: slices.Clone(a.Slaves),
			pending: slices.Clone(a.Slaves), off: kr.Offset, bits: kr.Bits, issuedAt: a.IssuedAt.UnixNano(),
			requestID: a.RequestID}
		st.keys[k.id] = k
		st.acquire(k)
	}
	cs.live += int64(len(a.Keys))
	cs.prune()
	st.remember(rk, c.At, 0, "", nil)
	return result{}
}

// inHole reports whether [start, end) lies inside one hole.
func (cs *connState) inHole(start, end int64) bool {
	for _, h := range cs.holes {
		if start >= h.start && end <= h.end {
			return true
		}
	}
	return false
}

// fill removes [start, end) from the hole containing it.
func (cs *connState) fill(start, end int64) {
	for i, h := range cs.holes {
		if start >= h.start && end <= h.end {
			var repl []hole
			if h.start < start {
				repl = append(repl, hole{start: h.start, end: start, at: h.at})
			}
			if end < h.end {
				repl = append(repl, hole{start: end, end: h.end, at: h.at})
			}
			cs.holes = slices.Replace(cs.holes, i, i+1, repl...)
			return
		}
	}
}

// burnOldHoles burns holes no late assignment filled in time.
func (cs *connState) burnOldHoles(now int64) {
	if len(cs.holes) == 0 {
		return
	}
	kept := cs.holes[:0]
	burned := false
	for _, h := range cs.holes {
		if h.at < now-int64(reqTableAge) {
			n := h.end - h.start
			cs.burnedBits += n
			cs.burned += (n + int64(cs.conn.KeySize) - 1) / int64(cs.conn.KeySize)
			burned = true
			continue
		}
		kept = append(kept, h)
	}
	cs.holes = kept
	if burned {
		cs.prune()
	}
}

func (st *fsmState) recordCheck(a *Assignment) result {
	id := Connection{MasterSAE: a.MasterSAE, SlaveSAE: a.SlaveSAE}.ID()
	cs, ok := st.conns[id]
	if !ok {
		return result{err: fmt.Errorf("%w: %s", ErrConnectionNotFound, id)}
	}
	if len(a.Keys) == 0 {
		return invalid("record: no keys")
	}
	if len(a.Slaves)-1 > cs.conn.MaxSAEIDCount {
		return invalid("record: too many slaves")
	}
	if err := validSlaves(a.MasterSAE, a.SlaveSAE, a.Slaves); err != nil {
		return result{err: err}
	}
	ids := make([]string, len(a.Keys))
	pos := int64(0)
	for i, kr := range a.Keys {
		ids[i] = kr.KeyID
		if kr.Bits <= 0 || kr.Bits%8 != 0 || kr.Offset%8 != 0 || kr.Offset < 0 {
			return invalid("record: key %s has bad range", kr.KeyID)
		}
		if kr.Offset < pos {
			return invalid("record: key ranges overlap or are out of order at %s", kr.KeyID)
		}
		end := kr.Offset + int64(kr.Bits)
		if kr.Offset < cs.carve && !(end <= cs.carve && cs.inHole(kr.Offset, end)) {
			return invalid("record: key %s range [%d, %d) already assigned or burned", kr.KeyID, kr.Offset, end)
		}
		if _, ok := st.keys[kr.KeyID]; ok {
			return invalid("record: key ID %s already in use", kr.KeyID)
		}
		pos = kr.Offset + int64(kr.Bits)
	}
	if dupOrEmpty(ids) {
		return invalid("record: duplicate or empty key ID")
	}
	if pos > cs.end {
		return result{err: fmt.Errorf("%w: assignment reaches bit %d, pool ends at %d", ErrInsufficientKeys, pos, cs.end)}
	}
	return result{}
}

func (st *fsmState) consume(c *consumeCmd) result {
	if c.RequestID == "" {
		return invalid("consume: empty request ID")
	}
	rk := "consume:" + c.RequestID
	if e, ok := st.reqs[rk]; ok {
		if e.caller != c.Caller {
			return invalid("consume: request ID reused by another caller")
		}
		if e.code != 0 {
			return result{err: codeErr(e.code)}
		}
		ks := make([]*keyRec, 0, len(e.keyIDs))
		for _, id := range e.keyIDs {
			k, ok := st.keys[id]
			if !ok {
				return result{err: fmt.Errorf("%w: retried request's keys are gone", ErrKeyNotFound)}
			}
			ks = append(ks, k)
		}
		return result{keys: st.outKeys(ks)}
	}
	ks, r := st.consumeCheck(c)
	if r.err != nil {
		return r
	}
	for _, k := range ks {
		k.pending = slices.DeleteFunc(slices.Clone(k.pending), func(s string) bool { return s == c.Caller })
		if len(k.pending) == 0 {
			k.state = kErased
			cs := st.conns[k.conn]
			cs.live--
			cs.erased++
		}
	}
	st.remember(rk, c.At, 0, c.Caller, slices.Clone(c.KeyIDs))
	return result{keys: st.outKeys(ks)}
}

func (st *fsmState) consumeCheck(c *consumeCmd) ([]*keyRec, result) {
	if len(c.KeyIDs) == 0 || dupOrEmpty(c.KeyIDs) {
		return nil, invalid("consume: empty or duplicate key IDs")
	}
	ks := make([]*keyRec, len(c.KeyIDs))
	for i, id := range c.KeyIDs {
		k, ok := st.keys[id]
		if !ok || k.state != kIssued || k.role != roleSlave {
			return nil, result{err: fmt.Errorf("%w: %s", ErrKeyNotFound, id)}
		}
		ks[i] = k
	}
	for _, k := range ks {
		if k.master == c.MasterSAE && !slices.Contains(k.pending, c.Caller) && slices.Contains(k.named, c.Caller) {
			// A named slave that already fetched this (multicast) key: for
			// it the key is gone, as for a unicast key after its fetch.
			return nil, result{err: fmt.Errorf("%w: %s (already fetched by %s)", ErrKeyNotFound, k.id, c.Caller)}
		}
		if k.master != c.MasterSAE || !slices.Contains(k.pending, c.Caller) {
			return nil, result{err: fmt.Errorf("%w: key %s", ErrNotAuthorized, k.id)}
		}
	}
	return ks, result{}
}

func (st *fsmState) burn(c *burnCmd) result {
	for _, id := range c.KeyIDs {
		k, ok := st.keys[id]
		if !ok || k.state != kIssued {
			continue
		}
		k.state = kBurned
		if cs, ok := st.conns[k.conn]; ok {
			cs.live--
			cs.burned++
		}
		st.finalize(k)
	}
	return result{}
}

// ---- status ----

func (cs *connState) status() ConnectionStatus {
	bits := cs.end - cs.carve
	return ConnectionStatus{Connection: cs.conn, StoredBits: bits, StoredKeys: bits / int64(cs.conn.KeySize),
		IssuedKeys: cs.live, BurnedKeys: cs.burned, ErasedKeys: cs.erased, AddedBlocks: cs.added}
}

func (f *fsm) connection(id string) (ConnectionStatus, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	cs, ok := f.st.conns[id]
	if !ok {
		return ConnectionStatus{}, fmt.Errorf("%w: %s", ErrConnectionNotFound, id)
	}
	return cs.status(), nil
}

func (f *fsm) connections() []ConnectionStatus {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]ConnectionStatus, 0, len(f.st.conns))
	for _, cs := range f.st.conns {
		out = append(out, cs.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID() < out[j].ID() })
	return out
}

// ---- snapshot, restore, digest ----

const snapVersion = 1

type snapBlock struct {
	ID      string `json:"id"`
	Start   int64  `json:"start"`
	Bytes   int    `json:"bytes"`
	Wrapped []byte `json:"wrapped"`
	Sealed  []byte `json:"sealed"`
}

type snapConn struct {
	Conn       Connection  `json:"conn"`
	End        int64       `json:"end"`
	Carve      int64       `json:"carve"`
	Live       int64       `json:"live"`
	Burned     int64       `json:"burned"`
	Erased     int64       `json:"erased"`
	Added      int64       `json:"added"`
	BurnedBits int64       `json:"burned_bits"`
	Blocks     []snapBlock `json:"blocks"`
	Recent     []string    `json:"recent"`
	Holes      []snapHole  `json:"holes"`
}

type snapHole struct {
	Start int64 `json:"start"`
	End   int64 `json:"end"`
	At    int64 `json:"at"`
}

type snapKey struct {
	ID        string   `json:"id"`
	Conn      string   `json:"conn"`
	Role      uint8    `json:"role"`
	Master    string   `json:"master"`
	Named     []string `json:"named"`
	Pending   []string `json:"pending"`
	Offset    int64    `json:"offset"`
	Bits      int      `json:"bits"`
	IssuedAt  int64    `json:"issued_at"`
	RequestID string   `json:"request_id"`
	State     keyState `json:"state"`
}

type snapReq struct {
	Key    string   `json:"key"`
	At     int64    `json:"at"`
	Code   int      `json:"code"`
	Caller string   `json:"caller"`
	KeyIDs []string `json:"key_ids"`
}

type snapState struct {
	Version int         `json:"version"`
	Index   uint64      `json:"index"` // last command index applied
	Now     int64       `json:"now"`
	Conns   []snapConn  `json:"conns"`
	Keys    []snapKey   `json:"keys"`
	Reqs    []snapReq   `json:"reqs"`
	Links   []snapLink  `json:"links"`
	Plugins snapPlugins `json:"plugins"`
}

// export copies the state into its canonical, sorted form. Byte slices are
// shared: they are never mutated after creation.
func (st *fsmState) export() *snapState {
	s := &snapState{Version: snapVersion, Now: st.now}
	for _, cs := range st.conns {
		sc := snapConn{Conn: cs.conn, End: cs.end, Carve: cs.carve, Live: cs.live, Burned: cs.burned,
			Erased: cs.erased, Added: cs.added, BurnedBits: cs.burnedBits, Recent: slices.Clone(cs.recent)}
		for _, h := range cs.holes {
			sc.Holes = append(sc.Holes, snapHole{Start: h.start, End: h.end, At: h.at})
		}
		for _, b := range cs.blocks {
			sc.Blocks = append(sc.Blocks, snapBlock{ID: b.id, Start: b.start, Bytes: b.bytes, Wrapped: b.wrapped, Sealed: b.sealed})
		}
		s.Conns = append(s.Conns, sc)
	}
	sort.Slice(s.Conns, func(i, j int) bool { return s.Conns[i].Conn.ID() < s.Conns[j].Conn.ID() })
	s.Keys = make([]snapKey, 0, len(st.keys))
	for _, k := range st.keys {
		s.Keys = append(s.Keys, snapKey{ID: k.id, Conn: k.conn, Role: k.role, Master: k.master, Named: k.named,
			Pending: k.pending, Offset: k.off, Bits: k.bits, IssuedAt: k.issuedAt, RequestID: k.requestID, State: k.state})
	}
	sort.Slice(s.Keys, func(i, j int) bool { return s.Keys[i].ID < s.Keys[j].ID })
	s.Links = st.exportLinks()
	s.Plugins = st.exportPlugins()
	s.Reqs = make([]snapReq, 0, len(st.order))
	for _, e := range st.order {
		s.Reqs = append(s.Reqs, snapReq{Key: e.key, At: e.at, Code: e.code, Caller: e.caller, KeyIDs: e.keyIDs})
	}
	return s
}

// importState builds a fresh state from a snapshot, recomputing derived
// fields (block refs, key pins).
func importState(s *snapState) (*fsmState, error) {
	if s.Version != snapVersion {
		return nil, fmt.Errorf("raftstore: snapshot version %d unsupported", s.Version)
	}
	st := newState()
	st.now = s.Now
	for _, sc := range s.Conns {
		cs := &connState{conn: sc.Conn, end: sc.End, carve: sc.Carve, live: sc.Live, burned: sc.Burned,
			erased: sc.Erased, added: sc.Added, burnedBits: sc.BurnedBits, recent: sc.Recent}
		for _, h := range sc.Holes {
			cs.holes = append(cs.holes, hole{start: h.Start, end: h.End, at: h.At})
		}
		for _, b := range sc.Blocks {
			if len(b.Sealed) != sealedLen(b.Bytes) {
				return nil, fmt.Errorf("raftstore: snapshot block %s malformed", b.ID)
			}
			cs.blocks = append(cs.blocks, &blockRec{id: b.ID, start: b.Start, bytes: b.Bytes, wrapped: b.Wrapped, sealed: b.Sealed})
		}
		st.conns[sc.Conn.ID()] = cs
	}
	for _, sk := range s.Keys {
		if _, ok := st.conns[sk.Conn]; !ok {
			return nil, fmt.Errorf("raftstore: snapshot key %s names unknown connection", sk.ID)
		}
		k := &keyRec{id: sk.ID, conn: sk.Conn, role: sk.Role, master: sk.Master, named: sk.Named, pending: sk.Pending,
			off: sk.Offset, bits: sk.Bits, issuedAt: sk.IssuedAt, requestID: sk.RequestID, state: sk.State}
		st.keys[k.id] = k
		st.acquire(k)
	}
	if err := st.importLinks(s.Links); err != nil {
		return nil, err
	}
	st.importPlugins(s.Plugins)
	for _, sr := range s.Reqs {
		e := &reqEntry{key: sr.Key, at: sr.At, code: sr.Code, caller: sr.Caller, keyIDs: sr.KeyIDs}
		st.reqs[e.key] = e
		st.order = append(st.order, e)
		for _, id := range e.keyIDs {
			if k, ok := st.keys[id]; ok {
				k.pins++
			}
		}
	}
	return st, nil
}

type fsmSnapshot struct{ s *snapState }

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := f.st.export()
	s.Index = f.index
	return &fsmSnapshot{s: s}, nil
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s.s); err != nil {
		sink.Cancel()
		return fmt.Errorf("raftstore: persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	dec := json.NewDecoder(rc)
	dec.DisallowUnknownFields()
	var s snapState
	if err := dec.Decode(&s); err != nil {
		return fmt.Errorf("raftstore: restore: %w", err)
	}
	st, err := importState(&s)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.st = st
	f.index = s.Index
	f.restores++
	f.mu.Unlock()
	return nil
}

// digest hashes the canonical encoding of the state.
func (f *fsm) digest() (uint64, string) {
	f.mu.RLock()
	s := f.st.export()
	idx := f.index
	f.mu.RUnlock()
	h := sha256.New()
	var buf bytes.Buffer
	_ = json.NewEncoder(&buf).Encode(s)
	h.Write(buf.Bytes())
	return idx, hex.EncodeToString(h.Sum(nil))
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
