package raftstore

// FSM pool bookkeeping: add_block, the sealed blocks of a connection's pool
// stream, block references and pruning, and the holes a slave site keeps
// for late assignments.

import (
	"fmt"
	"slices"
	"sort"
)

const wrappedLen = 12 + 32 + gcmOverhead

func (st *fsmState) addBlock(c *addBlockCmd) result { return st.addLinkBlock(c, 0) }

// addLinkBlock is addBlock for a link block that also brings relayBytes of
// relay material (added by the caller after it succeeds).
func (st *fsmState) addLinkBlock(c *addBlockCmd, relayBytes int) result {
	cs, ok := st.conns[c.ConnID]
	switch {
	case c.ConnID == "" && c.LinkPeer != "" && c.Bytes == 0:
		// A link block that brings only pad or relay material.
	case !ok:
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
		if c.Bytes < 0 || c.AuthBytes < 0 || c.Bytes+c.AuthBytes+relayBytes == 0 {
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
	if cs != nil && cs.holds(c.BlockID) {
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

// holds reports whether block id is in the pool or was dropped from it
// (recently enough to be remembered): either way it may not be added.
func (cs *connState) holds(id string) bool {
	for _, b := range cs.blocks {
		if b.id == id {
			return true
		}
	}
	return slices.Contains(cs.recent, id)
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
