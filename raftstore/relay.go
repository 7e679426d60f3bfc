package raftstore

import (
	"context"
	"fmt"
	"slices"
	"sort"
)

// Relay key (docs/ARCHITECTURE.md "Trusted-node relay"): besides pool bits
// and pad material, a link block may bring relay material, kept per peer
// KME as two ordered streams, one per direction, reserved for one-time-pad
// relaying. A block's relay material is split in two parts (the link
// decides where, Block.RelaySplit): the first goes to the stream sent by
// the site whose KME ID sorts first (direction 0, see RelayDir), the second
// to the other direction. Only the sending site of a direction chooses
// offsets in it, so the two ends of a link never race for the same bytes.
//
// Relay key is consumed by ordered byte ranges named by a relay block ID
// (relay command): a range starts at or after everything consumed before
// in its stream, so no relay-key byte is used twice at this site, and
// consumed material is erased in the same commit (whole sealed chunks).
// The same block ID with the same range is idempotent (a retry gets the
// first outcome). Relay material is sealed like pad material (AAD
// "link-relay|<peer>|<dir>" + block ID).
//
// A relayed block's life at its source site: relay "send" with the block's
// bits consumes the first hop's relay key and parks the bits, sealed, as
// the connection's pending relay block (one at a time per connection);
// relay_end "done" moves them into the pool once the destination committed
// them, relay_end "burn" drops them. At the destination, relay "deliver"
// consumes the last hop's relay key and adds the block to the pool in one
// entry; relay_end "burn" takes it out again while nothing was carved from
// it, or remembers the ID so a late delivery is refused.

// RelayDir is the direction of relay key sent from KME from to KME to: 0
// when from sorts first.
func RelayDir(from, to string) uint8 {
	if from < to {
		return 0
	}
	return 1
}

func relayAADID(peer string, dir uint8) string { return fmt.Sprintf("link-relay|%s|%d", peer, dir) }

// relayDoneCap bounds the per-stream table of relay block outcomes (oldest
// forgotten first); a retry older than that many relays is refused as
// below the used offset.
const relayDoneCap = 10_000

// Relay block outcomes at this site, per stream.
const (
	relaySent      uint8 = 1 // relay key consumed to send the block
	relayDelivered uint8 = 2 // relay key consumed and the block added to a pool here
	relayBurned    uint8 = 3 // the block's outcome was ambiguous: never used
	relayReceived  uint8 = 4 // relay key consumed to receive the block and pass it on
)

var relayStateNames = [...]string{"", "sent", "delivered", "burned", "received"}

type relayRec struct {
	block    string
	from, to uint64
	state    uint8
	conn     string // delivered: the pool the block went to
}

// relayState is one direction of a link's relay key (part of linkState).
type relayState struct {
	stream uint64      // relay material bytes ever added (minus dropped blocks)
	used   uint64      // bytes below this are consumed (and erased)
	chunks []*blockRec // start in bits of the relay stream
	done   map[string]*relayRec
	order  []*relayRec // FIFO of done
}

func (ls *linkState) relayState(dir uint8) *relayState {
	if ls.relay[dir] == nil {
		ls.relay[dir] = &relayState{done: map[string]*relayRec{}}
	}
	return ls.relay[dir]
}

// relayPart is one direction's part of a block's relay material, sealed
// (all zero when the block brings none for that direction).
type relayPart struct {
	Bytes   int    `json:"bytes"`
	Wrapped []byte `json:"wrapped"`
	Sealed  []byte `json:"sealed"`
}

// addRelayBlockCmd is add_block version 4: a link block that also brings
// relay material, one part per direction. A block without relay material
// stays add_block version 1.
type addRelayBlockCmd struct {
	addBlockCmd
	Relay [2]relayPart `json:"relay"`
}

// relayCmd consumes relay key [From, To) of stream Dir with Peer for relay
// block Block. Op "send": at the sending site of a hop; at the source site
// (Conn set) with the block's bits, parked as Conn's pending relay block.
// Op "receive": at an intermediate site, the hop it passes on. Op
// "deliver": at the destination, with the block's bits added to Conn's
// pool in the same commit. Op "burn": the block's outcome was ambiguous:
// its relay key counts as consumed, and a block delivered here leaves its
// pool if nothing was carved from it.
type relayCmd struct {
	At    int64  `json:"at"`
	Op    string `json:"op"`
	Peer  string `json:"peer"`
	Dir   uint8  `json:"dir"`
	Block string `json:"block"`
	From  uint64 `json:"from"`
	To    uint64 `json:"to"`
	// The block's bits (send at the source, deliver), sealed under this
	// site's KEK with AAD Conn + Block.
	Conn    string `json:"conn,omitempty"`
	Bytes   int    `json:"bytes,omitempty"`
	Wrapped []byte `json:"wrapped,omitempty"`
	Sealed  []byte `json:"sealed,omitempty"`
}

// relayEndCmd ends relay block Block of connection Conn at its source
// (Op "done": the pending bits enter the pool; "burn": they are dropped)
// or burns it at its destination ("burn").
type relayEndCmd struct {
	At    int64  `json:"at"`
	Op    string `json:"op"`
	Conn  string `json:"conn"`
	Block string `json:"block"`
	// HopBytes is the relay key the block's hops used (done at the
	// source; counted in ConnectionStatus.Relay).
	HopBytes int64 `json:"hop_bytes,omitempty"`
}

// RelayCounts are a source connection's relayed blocks: done (with their
// bits and the relay key their hops used, (bytes+32)·hops each) and burned
// (ConnectionStatus.Relay).
type RelayCounts struct {
	Done     int64 `json:"done"`
	DoneBits int64 `json:"done_bits"`
	HopBytes int64 `json:"hop_bytes"`
	Burned   int64 `json:"burned"`
}

// pendingRelay is a source connection's relay block on its way.
type pendingRelay struct {
	block   string
	bytes   int
	wrapped []byte
	sealed  []byte
}

func (st *fsmState) addRelayBlock(c *addRelayBlockCmd) result {
	total := 0
	for _, p := range c.Relay {
		switch {
		case p.Bytes == 0 && p.Sealed == nil && p.Wrapped == nil:
			continue // nothing for this direction
		case c.LinkPeer == "" || p.Bytes < 0 || len(p.Sealed) != sealedLen(p.Bytes) || len(p.Wrapped) != wrappedLen:
			return invalid("link block %s: malformed relay material", c.BlockID)
		}
		total += p.Bytes
	}
	if total == 0 {
		return invalid("link block %s: add_block version 4 without relay material", c.BlockID)
	}
	if r := st.addLinkBlock(&c.addBlockCmd, total); r.err != nil {
		return r
	}
	ls := st.link(c.LinkPeer)
	for dir, p := range c.Relay {
		if p.Bytes == 0 {
			continue
		}
		rs := ls.relayState(uint8(dir))
		rs.chunks = append(rs.chunks, &blockRec{id: c.BlockID, start: int64(rs.stream) * 8, bytes: p.Bytes,
			wrapped: p.Wrapped, sealed: p.Sealed})
		rs.stream += uint64(p.Bytes)
		ls.lastRelay[dir] = p.Bytes
	}
	return result{}
}

// dropRelayCheck says whether the link's last block's relay material can
// be undone (none of it consumed).
func (ls *linkState) dropRelayCheck(blockID string) error {
	for dir, n := range ls.lastRelay {
		if n == 0 {
			continue
		}
		rs := ls.relay[dir]
		if rs == nil || len(rs.chunks) == 0 || rs.chunks[len(rs.chunks)-1].id != blockID ||
			rs.used > uint64(rs.chunks[len(rs.chunks)-1].start/8) {
			return fmt.Errorf("%w: drop: relay material of block %s was used", ErrInvalid, blockID)
		}
	}
	return nil
}

// dropRelay undoes the last block's relay material (after dropRelayCheck).
func (ls *linkState) dropRelay() {
	for dir, n := range ls.lastRelay {
		if n == 0 {
			continue
		}
		rs := ls.relay[dir]
		k := len(rs.chunks)
		rs.chunks[k-1] = nil
		rs.chunks = rs.chunks[:k-1]
		rs.stream -= uint64(n)
	}
	ls.lastRelay = [2]int{}
}

func (st *fsmState) relay(c *relayCmd) result {
	switch {
	case c.Peer == "" || c.Block == "" || len(c.Block) > 256 || c.Dir > 1:
		return invalid("relay: needs a peer, a direction 0 or 1 and a block ID of 1..256 bytes")
	case c.Op != "send" && c.Op != "receive" && c.Op != "deliver" && c.Op != "burn":
		return invalid("relay: unknown op %q", c.Op)
	case (c.Op == "deliver" || (c.Op == "send" && c.Conn != "")) != (c.Bytes > 0):
		return invalid("relay: %s of block %s with %d bytes", c.Op, c.Block, c.Bytes)
	case c.Bytes > 0 && (c.Conn == "" || len(c.Sealed) != sealedLen(c.Bytes) || len(c.Wrapped) != wrappedLen):
		return invalid("relay: block %s: malformed ciphertext", c.Block)
	}
	ls := st.links[c.Peer]
	if ls == nil || ls.relay[c.Dir] == nil {
		return result{err: fmt.Errorf("%w: no relay key with %s", ErrInsufficientKeys, c.Peer)}
	}
	rs := ls.relay[c.Dir]
	if r, ok := rs.done[c.Block]; ok {
		if r.from != c.From || r.to != c.To {
			return invalid("relay: block %s used relay key [%d, %d)", c.Block, r.from, r.to)
		}
		switch {
		case c.Op == "burn":
			return st.burnRelayed(r)
		case r.state == relayBurned:
			return result{err: fmt.Errorf("%w: relay block %s was burned", ErrKeyNotFound, c.Block)}
		case r.state != map[string]uint8{"send": relaySent, "receive": relayReceived, "deliver": relayDelivered}[c.Op]:
			return invalid("relay: block %s was %s here, not %s", c.Block, relayStateNames[r.state], c.Op)
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
	rec := &relayRec{block: c.Block, from: c.From, to: c.To}
	switch c.Op {
	case "burn":
		rec.state = relayBurned
	case "receive":
		rec.state = relayReceived
	case "send":
		rec.state = relaySent
		if c.Conn != "" {
			cs := st.conns[c.Conn]
			switch {
			case cs == nil:
				return result{err: fmt.Errorf("%w: %s", ErrConnectionNotFound, c.Conn)}
			case cs.pending != nil:
				return invalid("relay: connection %s has relay block %s on its way", c.Conn, cs.pending.block)
			case cs.holds(c.Block):
				return result{err: fmt.Errorf("%w: %s", ErrBlockExists, c.Block)}
			}
			cs.pending = &pendingRelay{block: c.Block, bytes: c.Bytes, wrapped: c.Wrapped, sealed: c.Sealed}
		}
	case "deliver":
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
// block sent or passed on is never delivered by this site's word; a
// delivered block leaves its pool (dropFromPool).
func (st *fsmState) burnRelayed(r *relayRec) result {
	if r.state == relayDelivered {
		if res := st.dropFromPool(r.conn, r.block); res.err != nil {
			return res
		}
	}
	r.state, r.conn = relayBurned, ""
	return result{}
}

// dropFromPool takes block id out of connection conn's pool while it is
// the pool's last block and nothing was carved from it (refused
// otherwise), and remembers the ID so the block is never added again.
func (st *fsmState) dropFromPool(conn, id string) result {
	cs := st.conns[conn]
	if cs == nil {
		return result{}
	}
	n := len(cs.blocks)
	if n == 0 || cs.blocks[n-1].id != id || cs.carve > cs.blocks[n-1].start || cs.blocks[n-1].refs > 0 {
		if cs.holds(id) {
			return invalid("relay: block %s is in use in its pool", id)
		}
		cs.forget(id)
		return result{}
	}
	b := cs.blocks[n-1]
	cs.blocks[n-1] = nil
	cs.blocks = cs.blocks[:n-1]
	cs.end = b.start
	cs.added--
	cs.forget(id)
	return result{}
}

// forget remembers a block ID that left the pool (or never entered it) so
// that it is refused if it comes again.
func (cs *connState) forget(id string) {
	cs.recent = append(cs.recent, id)
	if len(cs.recent) > recentCap {
		cs.recent = slices.Clone(cs.recent[len(cs.recent)-recentCap:])
	}
}

func (st *fsmState) relayEnd(c *relayEndCmd) result {
	cs := st.conns[c.Conn]
	switch {
	case c.Block == "" || (c.Op != "done" && c.Op != "burn"):
		return invalid("relay_end: needs a block and op done or burn")
	case cs == nil:
		return result{err: fmt.Errorf("%w: %s", ErrConnectionNotFound, c.Conn)}
	}
	p := cs.pending
	if p == nil || p.block != c.Block {
		// Not on its way from here: a retried end, or a burn at the
		// destination.
		switch {
		case c.Op == "done" && slices.ContainsFunc(cs.blocks, func(b *blockRec) bool { return b.id == c.Block }):
			return result{}
		case c.Op == "done":
			return invalid("relay_end: block %s is not on its way from here", c.Block)
		}
		for _, ls := range st.links {
			for _, rs := range ls.relay {
				if r := rs.lookup(c.Block); r != nil && r.state == relayDelivered && r.conn == c.Conn {
					return st.burnRelayed(r)
				}
			}
		}
		return st.dropFromPool(c.Conn, c.Block)
	}
	cs.pending = nil
	if c.Op == "burn" {
		cs.forget(c.Block)
		cs.relay.Burned++
		return result{}
	}
	cs.relay.Done++
	cs.relay.DoneBits += 8 * int64(p.bytes)
	cs.relay.HopBytes += c.HopBytes
	cs.blocks = append(cs.blocks, &blockRec{id: p.block, start: cs.end, bytes: p.bytes, wrapped: p.wrapped, sealed: p.sealed})
	cs.end += int64(p.bytes) * 8
	cs.added++
	return result{}
}

func (rs *relayState) lookup(block string) *relayRec {
	if rs == nil {
		return nil
	}
	return rs.done[block]
}

// relaySegs locates relay stream bytes [from, to).
func (f *fsm) relaySegs(peer string, dir uint8, from, to uint64) ([]seg, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var rs *relayState
	if ls, ok := f.st.links[peer]; ok && dir <= 1 {
		rs = ls.relay[dir]
	}
	switch {
	case from >= to:
		return nil, fmt.Errorf("%w: relay key [%d, %d)", ErrInvalid, from, to)
	case rs == nil || to > rs.stream:
		return nil, fmt.Errorf("%w: relay stream with %s holds fewer than %d bytes", ErrInsufficientKeys, peer, to)
	case from < rs.used:
		return nil, fmt.Errorf("%w: relay key below %d is used", ErrKeyNotFound, rs.used)
	}
	var out []seg
	chunks := rs.chunks
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

func (f *fsm) relayOutcome(peer string, dir uint8, block string) (RelayOutcome, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	ls, ok := f.st.links[peer]
	if !ok || dir > 1 {
		return RelayOutcome{}, false
	}
	r := ls.relay[dir].lookup(block)
	if r == nil {
		return RelayOutcome{}, false
	}
	return RelayOutcome{Peer: peer, Dir: dir, BlockID: block, From: r.from, To: r.to, State: relayStateNames[r.state], Conn: r.conn}, true
}

func (f *fsm) relayStreams(peer string) [2]RelayStream {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out [2]RelayStream
	if ls, ok := f.st.links[peer]; ok {
		for dir, rs := range ls.relay {
			if rs != nil {
				out[dir] = RelayStream{Stream: rs.stream, Used: rs.used, Unconfirmed: uint64(ls.lastRelay[dir])}
			}
		}
	}
	return out
}

// ---- Store API ----

// RelayStream is one direction of a link's relay key at this site: bytes
// ever added (minus dropped blocks) and bytes consumed. Stream - Used is
// what is left to relay with.
type RelayStream struct {
	Stream uint64 `json:"stream"`
	Used   uint64 `json:"used"`
	// Unconfirmed is what the link's last block added to the stream: the
	// peer site may not hold that block (a commit that failed there), and
	// the sites' history check may still drop it, so it is not relayed
	// with until a later link block commits.
	Unconfirmed uint64 `json:"unconfirmed,omitempty"`
}

// Available is the relay key left in the stream that both ends of the
// link hold: below the last link block's part.
func (r RelayStream) Available() uint64 {
	if end := r.Stream - r.Unconfirmed; end > r.Used {
		return end - r.Used
	}
	return 0
}

// RelayOutcome is what this site committed for a relay block.
type RelayOutcome struct {
	Peer     string `json:"peer"`
	Dir      uint8  `json:"dir"`
	BlockID  string `json:"block"`
	From, To uint64 // relay stream bytes consumed
	State    string `json:"state"` // sent, received, delivered or burned
	Conn     string `json:"conn,omitempty"`
}

// RelayUse names relay key [From, To) of stream Dir with Peer, consumed
// for relay block BlockID.
type RelayUse struct {
	Peer     string
	Dir      uint8
	BlockID  string
	From, To uint64
}

// RelayStreams returns both directions of the relay key with peer from
// this node's committed state (no leader check: for status, metrics and
// choosing the next range; the commit refuses a stale choice).
func (s *Store) RelayStreams(peer string) [2]RelayStream { return s.fsm.relayStreams(peer) }

// RelayKey returns relay stream bytes [from, to) of direction dir with
// peer (plaintext, in memory only) from the leader's committed state;
// consumed bytes are gone.
func (s *Store) RelayKey(ctx context.Context, peer string, dir uint8, from, to uint64) ([]byte, error) {
	if err := s.readCheck(ctx); err != nil {
		return nil, err
	}
	segs, err := s.fsm.relaySegs(peer, dir, from, to)
	if err != nil {
		return nil, err
	}
	return s.openSegs(relayAADID(peer, dir), segs, to-from)
}

// RelayStart commits, at the source site, the consumption of the first
// hop's relay key u and the block's bits (sealed here) as connection
// connID's pending relay block, before the block leaves this site.
// Idempotent on the block ID and range; one block per connection at a
// time (RelayEnd ends it).
func (s *Store) RelayStart(ctx context.Context, u RelayUse, connID string, bits []byte) error {
	return s.relayWithBits(ctx, "send", u, connID, bits)
}

// RelaySend commits, at an intermediate site, the consumption of relay key
// u to pass block u.BlockID on, before it leaves this site.
func (s *Store) RelaySend(ctx context.Context, u RelayUse) error {
	return s.submit(ctx, cmdRelay, relayCmd{At: s.now(), Op: "send", Peer: u.Peer, Dir: u.Dir, Block: u.BlockID, From: u.From, To: u.To}).err
}

// RelayReceive commits, at an intermediate site, the consumption of the
// relay key u that block u.BlockID arrived under.
func (s *Store) RelayReceive(ctx context.Context, u RelayUse) error {
	return s.submit(ctx, cmdRelay, relayCmd{At: s.now(), Op: "receive", Peer: u.Peer, Dir: u.Dir, Block: u.BlockID, From: u.From, To: u.To}).err
}

// RelayDeliver commits, at the destination, in one entry, the consumption
// of relay key u and the relayed block bits (sealed here) into connection
// connID's pool under the block ID u.BlockID. Idempotent on the block ID
// and range.
func (s *Store) RelayDeliver(ctx context.Context, u RelayUse, connID string, bits []byte) error {
	return s.relayWithBits(ctx, "deliver", u, connID, bits)
}

func (s *Store) relayWithBits(ctx context.Context, op string, u RelayUse, connID string, bits []byte) error {
	if len(bits) == 0 || connID == "" {
		return fmt.Errorf("%w: relay %s needs a connection and bits", ErrInvalid, op)
	}
	wrapped, sealed, err := sealBlock(s.kek, connID, u.BlockID, bits)
	if err != nil {
		return err
	}
	return s.submit(ctx, cmdRelay, relayCmd{At: s.now(), Op: op, Peer: u.Peer, Dir: u.Dir, Block: u.BlockID, From: u.From, To: u.To,
		Conn: connID, Bytes: len(bits), Wrapped: wrapped, Sealed: sealed}).err
}

// RelayBurn marks relay block u burned in its stream: its relay key counts
// as consumed and, if it was delivered here, the block leaves its pool
// (refused with ErrInvalid once keys were carved from it).
func (s *Store) RelayBurn(ctx context.Context, u RelayUse) error {
	return s.submit(ctx, cmdRelay, relayCmd{At: s.now(), Op: "burn", Peer: u.Peer, Dir: u.Dir, Block: u.BlockID, From: u.From, To: u.To}).err
}

// RelayDone moves connection connID's pending relay block into its pool
// (at the source, once the destination committed it); hopBytes is the
// relay key its hops used (counted in ConnectionStatus.Relay).
// Idempotent.
func (s *Store) RelayDone(ctx context.Context, connID, block string, hopBytes int64) error {
	return s.submit(ctx, cmdRelayEnd, relayEndCmd{At: s.now(), Op: "done", Conn: connID, Block: block, HopBytes: hopBytes}).err
}

// RelayDiscard burns relay block block of connection connID: at the source
// its pending bits are dropped; at the destination a delivered block
// leaves the pool (refused with ErrInvalid once keys were carved from it)
// and a block not delivered yet is refused if it comes later.
func (s *Store) RelayDiscard(ctx context.Context, connID, block string) error {
	return s.submit(ctx, cmdRelayEnd, relayEndCmd{At: s.now(), Op: "burn", Conn: connID, Block: block}).err
}

// RelayOutcome returns what this site committed for relay block block in
// stream dir with peer, from the leader's committed state (false: nothing).
func (s *Store) RelayOutcome(ctx context.Context, peer string, dir uint8, block string) (RelayOutcome, bool, error) {
	if err := s.readCheck(ctx); err != nil {
		return RelayOutcome{}, false, err
	}
	o, ok := s.fsm.relayOutcome(peer, dir, block)
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

type snapPending struct {
	Block   string `json:"block"`
	Bytes   int    `json:"bytes"`
	Wrapped []byte `json:"wrapped"`
	Sealed  []byte `json:"sealed"`
}

func (p *pendingRelay) export() *snapPending {
	if p == nil {
		return nil
	}
	return &snapPending{Block: p.block, Bytes: p.bytes, Wrapped: p.wrapped, Sealed: p.sealed}
}

func (p *pendingRelay) blockID() string {
	if p == nil {
		return ""
	}
	return p.block
}

func importPending(sp *snapPending) (*pendingRelay, error) {
	if sp == nil {
		return nil, nil
	}
	if sp.Block == "" || sp.Bytes <= 0 || len(sp.Sealed) != sealedLen(sp.Bytes) || len(sp.Wrapped) != wrappedLen {
		return nil, fmt.Errorf("raftstore: snapshot pending relay block %q malformed", sp.Block)
	}
	return &pendingRelay{block: sp.Block, bytes: sp.Bytes, wrapped: sp.Wrapped, sealed: sp.Sealed}, nil
}

// exportRelay is a link's relay key for the snapshot: nil, or both
// directions (an unused direction as an empty stream).
func (ls *linkState) exportRelay() []snapRelay {
	if ls.relay[0] == nil && ls.relay[1] == nil {
		return nil
	}
	out := make([]snapRelay, 2)
	for dir, rs := range ls.relay {
		if rs == nil {
			continue
		}
		sr := snapRelay{Stream: rs.stream, Used: rs.used}
		for _, b := range rs.chunks {
			sr.Chunks = append(sr.Chunks, snapBlock{ID: b.id, Start: b.start, Bytes: b.bytes, Wrapped: b.wrapped, Sealed: b.sealed})
		}
		for _, r := range rs.order {
			sr.Done = append(sr.Done, snapRelayDone{Block: r.block, From: r.from, To: r.to, State: r.state, Conn: r.conn})
		}
		out[dir] = sr
	}
	return out
}

func importRelay(srs []snapRelay) ([2]*relayState, error) {
	var out [2]*relayState
	switch len(srs) {
	case 0:
		return out, nil
	case 2:
	default:
		return out, fmt.Errorf("raftstore: snapshot link with %d relay directions", len(srs))
	}
	for dir, sr := range srs {
		rs := &relayState{stream: sr.Stream, used: sr.Used, done: map[string]*relayRec{}}
		for _, b := range sr.Chunks {
			if len(b.Sealed) != sealedLen(b.Bytes) {
				return out, fmt.Errorf("raftstore: snapshot relay chunk %s malformed", b.ID)
			}
			rs.chunks = append(rs.chunks, &blockRec{id: b.ID, start: b.Start, bytes: b.Bytes, wrapped: b.Wrapped, sealed: b.Sealed})
		}
		for _, d := range sr.Done {
			if d.State < relaySent || d.State > relayReceived || rs.done[d.Block] != nil {
				return out, fmt.Errorf("raftstore: snapshot relay block %s malformed", d.Block)
			}
			r := &relayRec{block: d.Block, from: d.From, to: d.To, state: d.State, conn: d.Conn}
			rs.done[r.block] = r
			rs.order = append(rs.order, r)
		}
		out[dir] = rs
	}
	return out, nil
}
