package link

import (
	"context"
	"fmt"

	"qkdkms/quantum/auth"
	"qkdkms/raftstore"
)

// padCursor is where one connection's sessions have used the pad stream up
// to, at this site. Reservations in the site's Raft state run ahead of it
// by up to padAhead bytes, so most sessions spare that Raft commit; a new
// connection (or a new leader) starts at the reserved mark, which is past
// every pad any earlier connection of this site used.
type padCursor struct {
	at    uint64
	valid bool
}

// offer is the offset this site proposes for the next session's pads.
func (c *padCursor) offer(st raftstore.LinkState) uint64 {
	if !c.valid {
		c.at, c.valid = st.PadOffset, true
	}
	return c.at
}

// padAhead is how far past a session's pads a reservation reaches while
// more than 8 KiB of pads are left: sixteen sessions' pads, 512 bytes left
// unused when a connection ends.
const padAhead = 16 * 2 * auth.PadSize

// pads reserves (when the reservation does not already cover them) and
// reads this session's two one-time pads, starting at the larger of both
// sites' offers so that no pad is ever used twice. When the pads lie in
// material the block in flight brings, it waits for that commit.
func (l *Link) pads(ctx context.Context, p *peerConn, st raftstore.LinkState, peerOffer uint64) (ab, ba []byte, err error) {
	offset := max(p.cursor.offer(st), peerOffer)
	end := offset + 2*auth.PadSize
	psk := uint64(len(l.cfg.PSK) - auth.HashKeySize)
	// The block in flight may already be in this site's stream (the slave
	// site commits first) but is not final until both sites have it: pads
	// that reach into its material wait for its commit.
	if f := p.inflight; f != nil && end+uint64(f.auth) > psk+st.StreamBytes {
		if err := p.wait(ctx); err != nil {
			return nil, nil, err
		}
		if st, err = l.cfg.Store.LinkState(ctx, l.cfg.PeerKME); err != nil {
			return nil, nil, err
		}
	}
	// Pads that do not exist yet are neither reserved nor counted as used,
	// so a link short of pads does not push its offset past material that
	// later sessions bring.
	if end > psk+st.StreamBytes {
		return nil, nil, fmt.Errorf("link: %w: the pad stream holds %d bytes, this session needs up to %d", auth.ErrNoPad, psk+st.StreamBytes, end)
	}
	if end > st.PadOffset {
		// Reserve ahead only from plentiful material: a connection that
		// ends leaves its reserve unused, which must not starve the link
		// when pads run low.
		ahead := uint64(0)
		if psk+st.StreamBytes >= end+16*padAhead {
			ahead = padAhead
		}
		if err := l.cfg.Store.ReservePads(ctx, l.cfg.PeerKME, end+ahead); err != nil {
			return nil, nil, fmt.Errorf("link: reserve pads: %w", err)
		}
	}
	// Used from here on, whatever happens to the session.
	p.cursor.at = end
	buf, err := l.padBytes(ctx, offset, end)
	if err != nil {
		return nil, nil, err
	}
	// Pads are used once: erase the used stream material (the PSK file's
	// pads are the operator's to retire with the file), in steps of
	// releaseStep bytes to spare a Raft commit per session.
	if end > psk && end-psk >= l.released+releaseStep {
		if err := l.cfg.Store.ReleasePads(ctx, l.cfg.PeerKME, end-psk); err != nil {
			return nil, nil, fmt.Errorf("link: release used pads: %w", err)
		}
		l.released = end - psk
	}
	st.PadOffset = end
	l.mu.Lock()
	l.status.AuthPadsUsed = end
	l.status.AuthPadsLeft = l.padsLeft(st)
	l.mu.Unlock()
	return buf[:auth.PadSize], buf[auth.PadSize:], nil
}

// releaseStep is how much used pad material accumulates before the link
// erases it: eight sessions' pads.
const releaseStep = 8 * 2 * auth.PadSize

// padBytes reads [from,to) of the pad stream: the PSK's pad part, then the
// material sessions reserved.
func (l *Link) padBytes(ctx context.Context, from, to uint64) ([]byte, error) {
	psk := l.cfg.PSK[auth.HashKeySize:]
	out := make([]byte, 0, to-from)
	n := uint64(len(psk))
	if from < n {
		out = append(out, psk[from:min(to, n)]...)
	}
	if to > n {
		rest, err := l.cfg.Store.Pads(ctx, l.cfg.PeerKME, max(from, n)-n, to-n)
		if err != nil {
			return nil, fmt.Errorf("link: %w: %w", auth.ErrNoPad, err)
		}
		out = append(out, rest...)
	}
	return out, nil
}

// padsLeft is the unused pad material after offset.
func (l *Link) padsLeft(st raftstore.LinkState) int64 {
	return int64(len(l.cfg.PSK)-auth.HashKeySize) + int64(st.StreamBytes) - int64(st.PadOffset)
}

// blockSplit is how a session's key divides: pad stream, pool, relay (in
// that order in the key; the rest is discarded), relay0 of the relay bytes
// to direction 0.
type blockSplit struct{ auth, pool, relay, relay0 int }

// split decides how much of a session's key tops up the pad stream, how
// much goes to the pool and how much to the relay pool (relay.go): the auth
// stream gets AuthReserveBytes while it holds less than AuthTargetBytes;
// of the rest, a relay-only session gives relay what the relay pool needs
// (relay.total()), any other session RelayShare of it (up to that need) and
// the pool at most what it can take (need), and what the pool cannot take
// goes to relay as well, up to the need; the relay bytes divide between
// the directions by relay.dir0.
func (l *Link) split(keyBytes int, st raftstore.LinkState, need int, relay relayNeed, relayOnly bool) blockSplit {
	var s blockSplit
	if l.padsLeft(st) < int64(l.cfg.AuthTargetBytes) {
		s.auth = min(l.cfg.AuthReserveBytes, keyBytes)
	}
	rest := keyBytes - s.auth
	if relayOnly {
		s.relay = min(rest, relay.total())
	} else {
		s.relay = min(int(l.cfg.RelayShare*float64(rest)), relay.total())
		s.pool = min(rest-s.relay, need)
		s.relay += min(rest-s.relay-s.pool, relay.total()-s.relay)
	}
	s.relay0 = relay.dir0(s.relay)
	return s
}
