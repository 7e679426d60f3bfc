package raftstore

import (
	"context"
	"fmt"
	"slices"
	"sort"
)

// QKD link bookkeeping (per peer KME): the last two link blocks committed at
// this site, so the two sites can detect and undo a block only one of them
// committed; and the authentication pad stream, key material reserved from
// earlier sessions for the classical channel's Wegman–Carter tags. Pad
// material is sealed exactly like pool blocks (per-chunk data key wrapped by
// the KEK, AAD "link-auth|<peer>" + block ID) and obeys the same at-rest
// rules; ReleasePads erases used material.

func linkAADID(peer string) string { return "link-auth|" + peer }

type linkState struct {
	peer      string
	last      string
	prev      string
	lastConn  string // what the last block added, so DropLastBlock can undo it
	lastPool  int    // bytes
	lastAuth  int    // bytes
	padOffset uint64
	stream    uint64 // pad stream bytes
	padsFrom  uint64
	chunks    []*blockRec    // start in bits of the pad stream
	lastRelay [2]int         // relay bytes the last block added per direction (relay.go)
	relay     [2]*relayState // per direction, nil until a block brings relay material
}

func (st *fsmState) link(peer string) *linkState {
	ls, ok := st.links[peer]
	if !ok {
		ls = &linkState{peer: peer}
		st.links[peer] = ls
	}
	return ls
}

func (ls *linkState) export() LinkState {
	s := LinkState{Peer: ls.peer, LastBlock: ls.last, PrevBlock: ls.prev, PadOffset: ls.padOffset,
		StreamBytes: ls.stream, PadsFrom: ls.padsFrom}
	for dir, rs := range ls.relay {
		if rs != nil {
			s.Relay[dir] = RelayStream{Stream: rs.stream, Used: rs.used, Unconfirmed: uint64(ls.lastRelay[dir])}
		}
	}
	return s
}

type dropCmd struct {
	At      int64  `json:"at"`
	Peer    string `json:"peer"`
	BlockID string `json:"block"`
}

type padsCmd struct {
	At           int64  `json:"at"`
	Peer         string `json:"peer"`
	ReserveUpTo  uint64 `json:"reserve_up_to"`
	ReleaseBelow uint64 `json:"release_below"`
}

// linkAdd records a link block's history and pad material (part of addBlock;
// validated there).
func (st *fsmState) linkAdd(c *addBlockCmd) {
	ls := st.link(c.LinkPeer)
	if c.AuthBytes > 0 {
		ls.chunks = append(ls.chunks, &blockRec{id: c.BlockID, start: int64(ls.stream) * 8, bytes: c.AuthBytes,
			wrapped: c.AuthWrapped, sealed: c.AuthSealed})
		ls.stream += uint64(c.AuthBytes)
	}
	ls.prev, ls.last = ls.last, c.BlockID
	ls.lastConn, ls.lastPool, ls.lastAuth, ls.lastRelay = c.ConnID, c.Bytes, c.AuthBytes, [2]int{}
}

func (st *fsmState) dropLast(c *dropCmd) result {
	ls, ok := st.links[c.Peer]
	if !ok || ls.last != c.BlockID || c.BlockID == "" {
		return invalid("drop: %q is not the last link block with %s", c.BlockID, c.Peer)
	}
	var cs *connState
	if ls.lastPool > 0 {
		cs = st.conns[ls.lastConn]
		if cs != nil {
			n := len(cs.blocks)
			if n == 0 || cs.blocks[n-1].id != c.BlockID {
				return invalid("drop: block %s is no longer at the pool's end", c.BlockID)
			}
			if b := cs.blocks[n-1]; cs.carve > b.start || b.refs > 0 {
				return invalid("drop: block %s already holds assigned keys", c.BlockID)
			}
		}
	}
	if ls.lastAuth > 0 {
		n := len(ls.chunks)
		if n == 0 || ls.chunks[n-1].id != c.BlockID || ls.padsFrom > uint64(ls.chunks[n-1].start/8) {
			return invalid("drop: pad material of block %s was released", c.BlockID)
		}
	}
	if err := ls.dropRelayCheck(c.BlockID); err != nil {
		return result{err: err}
	}
	ls.dropRelay()
	if cs != nil {
		n := len(cs.blocks)
		b := cs.blocks[n-1]
		cs.blocks[n-1] = nil
		cs.blocks = cs.blocks[:n-1]
		cs.end = b.start
		cs.added--
		cs.recent = append(cs.recent, b.id)
		if len(cs.recent) > recentCap {
			cs.recent = append([]string(nil), cs.recent[len(cs.recent)-recentCap:]...)
		}
	}
	if ls.lastAuth > 0 {
		n := len(ls.chunks)
		ls.chunks[n-1] = nil
		ls.chunks = ls.chunks[:n-1]
		ls.stream -= uint64(ls.lastAuth)
	}
	ls.last, ls.prev = ls.prev, ""
	ls.lastConn, ls.lastPool, ls.lastAuth = "", 0, 0
	return result{}
}

func (st *fsmState) pads(c *padsCmd) result {
	if c.Peer == "" {
		return invalid("pads: empty peer")
	}
	if c.ReleaseBelow > 0 {
		if ls := st.links[c.Peer]; ls == nil || c.ReleaseBelow > ls.stream {
			return invalid("pads: release beyond the pad stream")
		}
	}
	ls := st.link(c.Peer)
	ls.padOffset = max(ls.padOffset, c.ReserveUpTo)
	if c.ReleaseBelow > ls.padsFrom {
		ls.padsFrom = c.ReleaseBelow
		ls.chunks = slices.DeleteFunc(ls.chunks, func(b *blockRec) bool { return uint64(b.end()/8) <= ls.padsFrom })
	}
	return result{}
}

// padSegs locates pad stream bytes [from, to).
func (f *fsm) padSegs(peer string, from, to uint64) ([]seg, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	ls, ok := f.st.links[peer]
	switch {
	case from > to:
		return nil, fmt.Errorf("%w: pads [%d, %d)", ErrInvalid, from, to)
	case !ok || to > ls.stream:
		return nil, fmt.Errorf("%w: pad stream with %s holds fewer than %d bytes", ErrInsufficientKeys, peer, to)
	case from < ls.padsFrom:
		return nil, fmt.Errorf("%w: pads below %d were released", ErrKeyNotFound, ls.padsFrom)
	}
	var out []seg
	i := sort.Search(len(ls.chunks), func(i int) bool { return uint64(ls.chunks[i].end()/8) > from })
	for ; i < len(ls.chunks) && from < to; i++ {
		b := ls.chunks[i]
		bs := uint64(b.start / 8)
		n := min(to, bs+uint64(b.bytes)) - from
		out = append(out, seg{b: b, off: int(from - bs), n: int(n)})
		from += n
	}
	if from != to {
		return nil, fmt.Errorf("%w: pad stream gap at %d", ErrKeyNotFound, from)
	}
	return out, nil
}

func (f *fsm) linkState(peer string) LinkState {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if ls, ok := f.st.links[peer]; ok {
		return ls.export()
	}
	return LinkState{Peer: peer}
}

// ---- Store API ----

// LinkState returns the link bookkeeping with peer from the leader's
// committed state (a zero state with Peer set when none exists yet).
func (s *Store) LinkState(ctx context.Context, peer string) (LinkState, error) {
	if err := s.readCheck(ctx); err != nil {
		return LinkState{}, err
	}
	ls := s.fsm.linkState(peer)
	ls.RelayEnabled = s.fsm.clusterVersion() >= 4 && s.cfg.MaxVersion >= 4
	return ls, nil
}

// ReservePads moves the link's pad offset forward to upTo (never back), in
// one commit, so no pad is used twice.
func (s *Store) ReservePads(ctx context.Context, peer string, upTo uint64) error {
	return s.submit(ctx, cmdPads, padsCmd{At: s.now(), Peer: peer, ReserveUpTo: upTo}).err
}

// ReleasePads erases pad stream material below byte offset below (whole
// sealed chunks; reading below it fails afterwards).
func (s *Store) ReleasePads(ctx context.Context, peer string, below uint64) error {
	return s.submit(ctx, cmdPads, padsCmd{At: s.now(), Peer: peer, ReleaseBelow: below}).err
}

// Pads returns pad stream bytes [from, to) (plaintext, in memory only),
// read from the leader's committed state.
func (s *Store) Pads(ctx context.Context, peer string, from, to uint64) ([]byte, error) {
	if err := s.readCheck(ctx); err != nil {
		return nil, err
	}
	segs, err := s.fsm.padSegs(peer, from, to)
	if err != nil {
		return nil, err
	}
	return s.openSegs(linkAADID(peer), segs, to-from)
}

// openSegs decrypts the sealed segments of a stream (pads, relay key) into
// n plaintext bytes, in memory only.
func (s *Store) openSegs(aadID string, segs []seg, n uint64) ([]byte, error) {
	out := make([]byte, n)
	pos := 0
	for _, sg := range segs {
		if err := openRange(s.kek, aadID, sg.b, sg.off, sg.n, out[pos:pos+sg.n]); err != nil {
			clear(out)
			return nil, err
		}
		pos += sg.n
	}
	return out, nil
}

// DropLastBlock undoes the link's last block (its pool bits and pad
// material) when the peer site never committed it. Refused (ErrInvalid)
// when blockID is not the last link block or its bits are already in use.
func (s *Store) DropLastBlock(ctx context.Context, peer, blockID string) error {
	return s.submit(ctx, cmdDrop, dropCmd{At: s.now(), Peer: peer, BlockID: blockID}).err
}

// ---- snapshot ----

type snapLink struct {
	Peer      string      `json:"peer"`
	Last      string      `json:"last"`
	Prev      string      `json:"prev"`
	LastConn  string      `json:"last_conn"`
	LastPool  int         `json:"last_pool"`
	LastAuth  int         `json:"last_auth"`
	PadOffset uint64      `json:"pad_offset"`
	Stream    uint64      `json:"stream"`
	PadsFrom  uint64      `json:"pads_from"`
	Chunks    []snapBlock `json:"chunks"`
	// Cluster version 4 (relay.go).
	LastRelay *[2]int     `json:"last_relay,omitempty"`
	Relay     []snapRelay `json:"relay,omitempty"` // none or both directions
}

func (st *fsmState) exportLinks() []snapLink {
	out := make([]snapLink, 0, len(st.links))
	for _, ls := range st.links {
		sl := snapLink{Peer: ls.peer, Last: ls.last, Prev: ls.prev, LastConn: ls.lastConn, LastPool: ls.lastPool,
			LastAuth: ls.lastAuth, PadOffset: ls.padOffset, Stream: ls.stream, PadsFrom: ls.padsFrom,
			Relay: ls.exportRelay()}
		if ls.lastRelay != [2]int{} {
			lr := ls.lastRelay
			sl.LastRelay = &lr
		}
		for _, b := range ls.chunks {
			sl.Chunks = append(sl.Chunks, snapBlock{ID: b.id, Start: b.start, Bytes: b.bytes, Wrapped: b.wrapped, Sealed: b.sealed})
		}
		out = append(out, sl)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Peer < out[j].Peer })
	return out
}

func (st *fsmState) importLinks(links []snapLink) error {
	for _, sl := range links {
		ls := &linkState{peer: sl.Peer, last: sl.Last, prev: sl.Prev, lastConn: sl.LastConn, lastPool: sl.LastPool,
			lastAuth: sl.LastAuth, padOffset: sl.PadOffset, stream: sl.Stream, padsFrom: sl.PadsFrom}
		if sl.LastRelay != nil {
			ls.lastRelay = *sl.LastRelay
		}
		rs, err := importRelay(sl.Relay)
		if err != nil {
			return err
		}
		ls.relay = rs
		for _, b := range sl.Chunks {
			if len(b.Sealed) != sealedLen(b.Bytes) {
				return fmt.Errorf("raftstore: snapshot pad chunk %s malformed", b.ID)
			}
			ls.chunks = append(ls.chunks, &blockRec{id: b.ID, start: b.Start, bytes: b.Bytes, wrapped: b.Wrapped, sealed: b.Sealed})
		}
		st.links[sl.Peer] = ls
	}
	return nil
}
