package link

import (
	"qkdkms/raftstore"
)

// Relay pool (issue 12; node/CONFIG.md, "Relay pool"): besides the pools
// of the SAE connections between its two sites, a link fills relay key for
// one-time-pad relaying, RelayPoolBytes per direction. Alice decides, in
// the authenticated commit message, how many of a session's final key
// bytes go to relay and how many of those to direction 0 (the relay
// stream sent by the site whose KME ID sorts first; raftstore.RelayDir),
// after the pad top-up:
//
//   - a session for a connection: while either direction is below the
//     target, RelayShare of the rest goes to relay, and so does what the
//     connection's pool cannot take, up to what the relay pool needs;
//   - a relay-only session (no connection between the sites needs key and
//     the relay pool is below target): everything but the pad top-up goes
//     to relay, up to what it needs; the block names no connection.
//
// What the relay pool needs is the sum of the two directions' shortfalls;
// the relay bytes divide between the directions in proportion to them, so
// no direction passes the target. Relay travels only under link protocol
// relayProtocol, and only while both sites' stores accept relay material
// (cluster version 4, raftstore.LinkState.RelayEnabled); otherwise no
// relay key is made and keys flow as before.

// relayProtocol is the first link protocol version whose commit message
// carries relay bytes and whose sessions may be relay-only.
const relayProtocol = 3

// relayLevels is the relay key available at this site per direction,
// indexed by raftstore.RelayDir (0: the stream the site whose KME ID sorts
// first sends). peerUsed, when given, is what the peer reported consumed
// (its last ready): a site that consumed relay key has less of it than the
// other until the other consumes the same range, so the larger use counts.
// (The peer's stream lengths are not used: a block in flight may be in
// one site's store and not the other's; the caller counts it.)
func (l *Link) relayLevels(peerUsed []uint64) [2]int64 {
	var out [2]int64
	for i, r := range l.cfg.Store.RelayStreams(l.cfg.PeerKME) {
		used := r.Used
		if len(peerUsed) == len(out) {
			used = max(used, peerUsed[i])
		}
		out[i] = int64(r.Stream) - int64(min(used, r.Stream))
	}
	return out
}

// relayUsed is this site's consumed relay key per direction, for a ready.
func (l *Link) relayUsed() []uint64 {
	rs := l.cfg.Store.RelayStreams(l.cfg.PeerKME)
	return []uint64{rs[0].Used, rs[1].Used}
}

// relayHere reports whether this site's store takes relay material: its
// cluster version allows it and no commit was refused for want of it
// during this leadership.
func (l *Link) relayHere(st raftstore.LinkState) bool {
	return st.RelayEnabled && !l.relayOff.Load()
}

// relayShort is how many relay bytes each direction lacks to reach the
// target from levels; none when the link makes no relay key on this
// connection.
func (l *Link) relayShort(p *peerConn, st raftstore.LinkState, levels [2]int64) relayNeed {
	var n relayNeed
	if l.cfg.RelayPoolBytes <= 0 || !p.relay() || !l.relayHere(st) {
		return n
	}
	for i, lv := range levels {
		n[i] = int(max(0, int64(l.cfg.RelayPoolBytes)-lv))
	}
	return n
}

// relayNeed is the shortfall per direction (raftstore.RelayDir order).
type relayNeed [2]int

// total is the relay bytes a block should bring.
func (n relayNeed) total() int { return n[0] + n[1] }

// dir0 is how many of r ≤ total() relay bytes go to direction 0: a share
// in proportion to its shortfall, so neither direction gets more than it
// lacks.
func (n relayNeed) dir0(r int) int {
	if r >= n.total() {
		return n[0]
	}
	return int(int64(r) * int64(n[0]) / int64(n.total()))
}
