package raftstore

import (
	"context"
	"fmt"
	"slices"
	"sort"
)

// Relay key (issue 12, docs/ARCHITECTURE.md "Trusted-node relay"): besides
// pool bits and pad material, a link block may bring relay material, kept
// per peer KME as an ordered stream reserved for one-time-pad relaying.
// Relay key is consumed by ordered byte ranges named by a relay block ID
// (relay command): a range starts at or after everything consumed before,
// so no relay-key byte is used twice at this site, and consumed material is
// erased in the same commit (whole sealed chunks). The same block ID with
// the same range is idempotent (a retry gets the first outcome). Relay
// material is sealed like pad material (AAD "link-relay|<peer>" + block ID).

func relayAADID(peer string) string { return "link-relay|" + peer }

// relayDoneCap bounds the per-peer table of relay block outcomes (oldest
// forgotten first); a retry older than that many relays is refused as
// below the used offset.
const relayDoneCap = 10_000

// Relay block outcomes at this site.
const (
	relaySent      uint8 = 1 // relay key consumed to send the block
	relayDelivered uint8 = 2 // relay key consumed and the block added to a pool here
	relayBurned    uint8 = 3 // the block's outcome was ambiguous: never used
)

type relayRec struct {
	block    string
	from, to uint64
	state    uint8
	conn     string // delivered: the pool the block went to
}

// relayState is a link's relay key bookkeeping (part of linkState).
type relayState struct {
	stream uint64      // relay material bytes ever added (minus dropped blocks)
	used   uint64      // bytes below this are consumed (and erased)
	chunks []*blockRec // start in bits of the relay stream
	done   map[string]*relayRec
	order  []*relayRec // FIFO of done
}

func (ls *linkState) relayState() *relayState {
	if ls.relay == nil {
		ls.relay = &relayState{done: map[string]*relayRec{}}
	}
	return ls.relay
}

// addRelayBlockCmd is add_block version 4: a link block that also brings
// relay material. A block without relay material stays add_block version 1.
type addRelayBlockCmd struct {
	addBlockCmd
	RelayBytes   int    `json:"relay_bytes"`
	RelayWrapped []byte `json:"relay_wrapped"`
	RelaySealed  []byte `json:"relay_sealed"`
}

// relayCmd consumes relay key [From, To) with Peer for relay block Block:
// at the sending site alone; at the receiving site with the decrypted block
// (sealed under this site's KEK) added to connection Conn's pool in the
// same commit; or, with Burn, marking the block burned (a delivered block
// leaves its pool if nothing was carved from it).
type relayCmd struct {
	At    int64  `json:"at"`
	Peer  string `json:"peer"`
	Block string `json:"block"`
	From  uint64 `json:"from"`
	To    uint64 `json:"to"`
	Burn  bool   `json:"burn,omitempty"`
	// Delivery at the receiving site.
	Conn    string `json:"conn,omitempty"`
	Bytes   int    `json:"bytes,omitempty"`
	Wrapped []byte `json:"wrapped,omitempty"`
	Sealed  []byte `json:"sealed,omitempty"`
}

func (st *fsmState) addRelayBlock(c *addRelayBlockCmd) result {
	if c.LinkPeer == "" || c.RelayBytes <= 0 || len(c.RelaySealed) != sealedLen(c.RelayBytes) || len(c.RelayWrapped) != wrappedLen {
		return invalid("link block %s: malformed relay material", c.BlockID)
	}
	if r := st.addLinkBlock(&c.addBlockCmd, c.RelayBytes); r.err != nil {
		return r
	}
	ls := st.link(c.LinkPeer)
	rs := ls.relayState()
	rs.chunks = append(rs.chunks, &blockRec{id: c.BlockID, start: int64(rs.stream) * 8, bytes: c.RelayBytes,
		wrapped: c.RelayWrapped, sealed: c.RelaySealed})
	rs.stream += uint64(c.RelayBytes)
	ls.lastRelay = c.RelayBytes
	return result{}
}

// dropRelayCheck says whether the link's last block's relay material can
// be undone (none of it consumed).
func (ls *linkState) dropRelayCheck(blockID string) error {
	if ls.lastRelay == 0 {
		return nil
	}
	rs := ls.relay
	if rs == nil || len(rs.chunks) == 0 || rs.chunks[len(rs.chunks)-1].id != blockID ||
		rs.used > uint64(rs.chunks[len(rs.chunks)-1].start/8) {
		return fmt.Errorf("%w: drop: relay material of block %s was used", ErrInvalid, blockID)
	}
	return nil
}

func (ls *linkState) dropRelay() {
	if ls.lastRelay == 0 {
		return
	}
	rs := ls.relay
	n := len(rs.chunks)
	rs.chunks[n-1] = nil
	rs.chunks = rs.chunks[:n-1]
	rs.stream -= uint64(ls.lastRelay)
	ls.lastRelay = 0
}

func (st *fsmState) relay(c *relayCmd) result {
	if c.Peer == "" || c.Block == "" || len(c.Block) > 256 {
		return invalid("relay: needs a peer and a block ID of 1..256 bytes")
	}
	if c.Burn && c.Conn != "" {
		return invalid("relay: a burn delivers nothing")
	}
	ls := st.links[c.Peer]
	if ls == nil || ls.relay == nil {
		return result{err: fmt.Errorf("%w: no relay key with %s", ErrInsufficientKeys, c.Peer)}
	}
	rs := ls.relay
	if r, ok := rs.done[c.Block]; ok {
		if r.from != c.From || r.to != c.To {
			return invalid("relay: block %s used relay key [%d, %d)", c.Block, r.from, r.to)
		}
		switch {
		case c.Burn:
			return st.burnRelayed(r)
		case r.state == relayBurned:
			return result{err: fmt.Errorf("%w: relay block %s was burned", ErrKeyNotFound, c.Block)}
		case (c.Conn != "") != (r.state == relayDelivered):
			return invalid("relay: block %s was sent from here and delivered elsewhere", c.Block)
		default:
			return result{} // the first outcome
		}
	}
	switch {
	case c.From >= c.To:
		return invalid("relay: empty range [%d, %d)", c.From, c.To)
	case c.From < rs.used:
		return invalid("relay: relay key with %s below %d is used", c.Peer, rs.used)
	case c.To > rs.stream:
		return result{err: fmt.Errorf("%w: relay stream with %s holds %d bytes, [%d, %d) asked", ErrInsufficientKeys, c.Peer, rs.stream, c.From, c.To)}
	}
	rec := &relayRec{block: c.Block, from: c.From, to: c.To, state: relaySent}
	switch {
	case c.Burn:
		rec.state = relayBurned
	case c.Conn != "":
		if c.Bytes <= 0 {
			return invalid("relay: delivery of block %s without bits", c.Block)
		}
		if r := st.addBlock(&addBlockCmd{At: c.At, ConnID: c.Conn, BlockID: c.Block, Bytes: c.Bytes, Wrapped: c.Wrapped, Sealed: c.Sealed}); r.err != nil {
			return r
		}
		rec.state, rec.conn = relayDelivered, c.Conn
	}
	rs.used = c.To
	rs.chunks = slices.DeleteFunc(rs.chunks, func(b *blockRec) bool { return uint64(b.end()/8) <= rs.used })
	rs.done[c.Block] = rec
	rs.order = append(rs.order, rec)
	if len(rs.order) > relayDoneCap {
		delete(rs.done, rs.order[0].block)
		rs.order = slices.Clone(rs.order[1:])
	}
	return result{}
}

// burnRelayed burns a relay block this site already has an outcome for: a
// sent block is never delivered by this site's word; a delivered block
// leaves its pool while it is the pool's last block and nothing was carved
// from it, otherwise the burn is refused (the block is in use).
func (st *fsmState) burnRelayed(r *relayRec) result {
	switch r.state {
	case relayBurned:
		return result{}
	case relayDelivered:
		cs := st.conns[r.conn]
		if cs != nil {
			n := len(cs.blocks)
			if n == 0 || cs.blocks[n-1].id != r.block || cs.carve > cs.blocks[n-1].start || cs.blocks[n-1].refs > 0 {
				return invalid("relay: block %s is in use in its pool", r.block)
			}
			b := cs.blocks[n-1]
			cs.blocks[n-1] = nil
			cs.blocks = cs.blocks[:n-1]
			cs.end = b.start
			cs.added--
			cs.recent = append(cs.recent, b.id)
			if len(cs.recent) > recentCap {
				cs.recent = slices.Clone(cs.recent[len(cs.recent)-recentCap:])
			}
		}
	}
	r.state, r.conn = relayBurned, ""
	return result{}
}

// relaySegs locates relay stream bytes [from, to).
func (f *fsm) relaySegs(peer string, from, to uint64) ([]seg, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	ls, ok := f.st.links[peer]
	switch {
	case from >= to:
		return nil, fmt.Errorf("%w: relay key [%d, %d)", ErrInvalid, from, to)
	case !ok || ls.relay == nil || to > ls.relay.stream:
		return nil, fmt.Errorf("%w: relay stream with %s holds fewer than %d bytes", ErrInsufficientKeys, peer, to)
	case from < ls.relay.used:
		return nil, fmt.Errorf("%w: relay key below %d is used", ErrKeyNotFound, ls.relay.used)
	}
	var out []seg
	chunks := ls.relay.chunks
	i := sort.Search(len(chunks), func(i int) bool { return uint64(chunks[i].end()/8) > from })
	for ; i < len(chunks) && from < to; i++ {
		b := chunks[i]
		bs := uint64(b.start / 8)
		n := min(to, bs+uint64(b.bytes)) - from
		out = append(out, seg{b: b, off: int(from - bs), n: int(n)})
		from += n
	}
	if from != to {
		return nil, fmt.Errorf("%w: relay stream gap at %d", ErrKeyNotFound, from)
	}
	return out, nil
}

func (f *fsm) relayOutcome(peer, block string) (RelayOutcome, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	ls, ok := f.st.links[peer]
	if !ok || ls.relay == nil {
		return RelayOutcome{}, false
	}
	r, ok := ls.relay.done[block]
	if !ok {
		return RelayOutcome{}, false
	}
	return RelayOutcome{Peer: peer, BlockID: block, From: r.from, To: r.to, State: [...]string{"", "sent", "delivered", "burned"}[r.state], Conn: r.conn}, true
}

// ---- Store API ----

// RelayOutcome is what this site committed for a relay block.
type RelayOutcome struct {
	Peer     string `json:"peer"`
	BlockID  string `json:"block"`
	From, To uint64 // relay stream bytes consumed
	State    string `json:"state"` // sent, delivered or burned
	Conn     string `json:"conn,omitempty"`
}

// RelayUse names relay key [From, To) with Peer, consumed for relay block
// BlockID.
type RelayUse struct {
	Peer     string
	BlockID  string
	From, To uint64
}

// RelayKey returns relay stream bytes [from, to) with peer (plaintext, in
// memory only) from the leader's committed state; consumed bytes are gone.
func (s *Store) RelayKey(ctx context.Context, peer string, from, to uint64) ([]byte, error) {
	if err := s.readCheck(ctx); err != nil {
		return nil, err
	}
	segs, err := s.fsm.relaySegs(peer, from, to)
	if err != nil {
		return nil, err
	}
	return s.openSegs(relayAADID(peer), segs, to-from)
}

// RelaySend commits the consumption of relay key u.From..u.To for sending
// block u.BlockID, before it leaves this site. Idempotent on the block ID
// and range; a range overlapping anything consumed before is refused.
func (s *Store) RelaySend(ctx context.Context, u RelayUse) error {
	return s.submit(ctx, cmdRelay, relayCmd{At: s.now(), Peer: u.Peer, Block: u.BlockID, From: u.From, To: u.To}).err
}

// RelayDeliver commits, in one entry, the consumption of relay key u and
// the relayed block bits (sealed here) into connection connID's pool under
// the block ID u.BlockID. Idempotent on the block ID and range.
func (s *Store) RelayDeliver(ctx context.Context, u RelayUse, connID string, bits []byte) error {
	if len(bits) == 0 || connID == "" {
		return fmt.Errorf("%w: relay delivery needs a connection and bits", ErrInvalid)
	}
	wrapped, sealed, err := sealBlock(s.kek, connID, u.BlockID, bits)
	if err != nil {
		return err
	}
	return s.submit(ctx, cmdRelay, relayCmd{At: s.now(), Peer: u.Peer, Block: u.BlockID, From: u.From, To: u.To,
		Conn: connID, Bytes: len(bits), Wrapped: wrapped, Sealed: sealed}).err
}

// RelayBurn marks relay block u burned: its relay key counts as consumed
// and, if it was delivered here, the block leaves its pool (refused with
// ErrInvalid once keys were carved from it).
func (s *Store) RelayBurn(ctx context.Context, u RelayUse) error {
	return s.submit(ctx, cmdRelay, relayCmd{At: s.now(), Peer: u.Peer, Block: u.BlockID, From: u.From, To: u.To, Burn: true}).err
}

// RelayOutcome returns what this site committed for relay block block
// with peer, from the leader's committed state (false: nothing).
func (s *Store) RelayOutcome(ctx context.Context, peer, block string) (RelayOutcome, bool, error) {
	if err := s.readCheck(ctx); err != nil {
		return RelayOutcome{}, false, err
	}
	o, ok := s.fsm.relayOutcome(peer, block)
	return o, ok, nil
}

// ---- snapshot (cluster version 4) ----

type snapRelay struct {
	Stream uint64          `json:"stream"`
	Used   uint64          `json:"used"`
	Chunks []snapBlock     `json:"chunks"`
	Done   []snapRelayDone `json:"done"`
}

type snapRelayDone struct {
	Block string `json:"block"`
	From  uint64 `json:"from"`
	To    uint64 `json:"to"`
	State uint8  `json:"state"`
	Conn  string `json:"conn,omitempty"`
}

func (rs *relayState) export() *snapRelay {
	if rs == nil {
		return nil
	}
	sr := &snapRelay{Stream: rs.stream, Used: rs.used}
	for _, b := range rs.chunks {
		sr.Chunks = append(sr.Chunks, snapBlock{ID: b.id, Start: b.start, Bytes: b.bytes, Wrapped: b.wrapped, Sealed: b.sealed})
	}
	for _, r := range rs.order {
		sr.Done = append(sr.Done, snapRelayDone{Block: r.block, From: r.from, To: r.to, State: r.state, Conn: r.conn})
	}
	return sr
}

func importRelay(sr *snapRelay) (*relayState, error) {
	if sr == nil {
		return nil, nil
	}
	rs := &relayState{stream: sr.Stream, used: sr.Used, done: map[string]*relayRec{}}
	for _, b := range sr.Chunks {
		if len(b.Sealed) != sealedLen(b.Bytes) {
			return nil, fmt.Errorf("raftstore: snapshot relay chunk %s malformed", b.ID)
		}
		rs.chunks = append(rs.chunks, &blockRec{id: b.ID, start: b.Start, bytes: b.Bytes, wrapped: b.Wrapped, sealed: b.Sealed})
	}
	for _, d := range sr.Done {
		if d.State < relaySent || d.State > relayBurned || rs.done[d.Block] != nil {
			return nil, fmt.Errorf("raftstore: snapshot relay block %s malformed", d.Block)
		}
		r := &relayRec{block: d.Block, from: d.From, to: d.To, state: d.State, conn: d.Conn}
		rs.done[r.block] = r
		rs.order = append(rs.order, r)
	}
	return rs, nil
}
