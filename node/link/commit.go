package link

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"

	"qkdkms/quantum/session"
	"qkdkms/raftstore"
)

func blockID(id [16]byte) string { return hex.EncodeToString(id[:]) }

// channel is what link messages travel on: the classical channel (raw or
// authenticated) or the commit queue.
type channel interface {
	Send(context.Context, []byte) error
	Recv(context.Context) ([]byte, error)
}

// peerConn is one link connection's state at this site: the wire, the
// protocol both ends speak, the pad cursor, whether the two sites' last
// blocks have been compared, and the block commit in flight.
type peerConn struct {
	ctx     context.Context // the connection's life (leadership)
	w       *wire
	version int
	cursor  padCursor
	synced  bool
	// peerRelay: the peer's store takes relay material (its hello, then
	// its last ready); peerUsed: the relay key it consumed per direction,
	// from its last ready.
	peerRelay bool
	peerUsed  []uint64
	// inflight is the commit running beside the next session (protocol 2);
	// only the goroutine that runs this connection's sessions touches it.
	inflight *inflight
	// ahead is the next frame's front half, which the last session ran and
	// the next one finishes (aheadProtocol); the same goroutine owns it.
	ahead *session.Ahead
}

type inflight struct {
	conn  string // connection ID
	bytes int    // pool bytes the block adds
	auth  int    // pad stream bytes the block adds
	relay [2]int // relay bytes the block adds per direction
	done  chan struct{}
	err   error // set before done is closed
}

func newPeerConn(ctx context.Context, w *wire, peerVersion int) *peerConn {
	return &peerConn{ctx: ctx, w: w, version: max(1, min(protocolVersion, peerVersion))}
}

// overlap reports whether a block's commit runs beside the next session.
func (p *peerConn) overlap() bool { return p.version >= 2 }

// relay reports whether blocks on this connection may carry relay key:
// both ends speak relayProtocol and the peer's store takes it.
func (p *peerConn) relay() bool { return p.version >= relayProtocol && p.peerRelay }

// wait returns the outcome of the commit in flight, nil when none. A
// failed commit keeps failing every later wait: the connection is over.
func (p *peerConn) wait(ctx context.Context) error {
	f := p.inflight
	if f == nil {
		return nil
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if f.err != nil {
		return f.err
	}
	p.inflight = nil
	return nil
}

// drain waits for the commit in flight once the connection is closed, so
// that a new connection compares histories only after it ended.
func (p *peerConn) drain() error {
	if p.inflight == nil {
		return nil
	}
	<-p.inflight.done
	return p.inflight.err
}

// unfinished is the commit in flight while it has not ended, else nil.
func (p *peerConn) unfinished() *inflight {
	f := p.inflight
	if f == nil {
		return nil
	}
	select {
	case <-f.done:
		return nil
	default:
		return f
	}
}

// count adds the block in flight to its connection's pool, so the
// scheduler and the split do not overfill it while it commits (once the
// commit ended the store counts it itself); nil-safe.
func (f *inflight) count(conns []raftstore.ConnectionStatus) {
	if f == nil {
		return
	}
	for i := range conns {
		if c := &conns[i]; c.ID() == f.conn {
			c.StoredBits += 8 * int64(f.bytes)
			if c.KeySize > 0 {
				c.StoredKeys = c.StoredBits / int64(c.KeySize)
			}
		}
	}
}

// countRelay adds the block in flight's relay bytes to levels; nil-safe.
func (f *inflight) countRelay(levels [2]int64) [2]int64 {
	if f != nil {
		levels[0] += int64(f.relay[0])
		levels[1] += int64(f.relay[1])
	}
	return levels
}

// blockConn is the connection ID a block names: none ("") for a
// relay-only session's (the zero connection).
func blockConn(c raftstore.ConnectionStatus) string {
	if c.MasterSAE == "" && c.SlaveSAE == "" {
		return ""
	}
	return c.ID()
}

// checkCommit checks Alice's split of a key of keyLen bytes: non-negative
// parts that fit the key, relay bytes only under relayProtocol and split
// within themselves,
// and a relay-only session's block naming no pool bytes.
func checkCommit(p *peerConn, c msg, keyLen int, relayOnly bool) error {
	switch {
	case c.Auth < 0 || c.KeyBytes < 0 || c.Relay < 0 || c.Auth+c.KeyBytes+c.Relay > keyLen:
		return fmt.Errorf("%w: commit of %d+%d+%d bytes from a %d-byte key", session.ErrProtocol, c.Auth, c.KeyBytes, c.Relay, keyLen)
	case c.RelaySplit < 0 || c.RelaySplit > c.Relay:
		return fmt.Errorf("%w: commit of %d relay bytes, %d of them to direction 0", session.ErrProtocol, c.Relay, c.RelaySplit)
	case c.Relay > 0 && p.version < relayProtocol:
		return fmt.Errorf("%w: relay bytes under link protocol %d", session.ErrProtocol, p.version)
	case relayOnly && c.KeyBytes > 0:
		return fmt.Errorf("%w: a relay-only session commits %d pool bytes", session.ErrProtocol, c.KeyBytes)
	}
	return nil
}

// commitBlock stores a session's block at both sites, in order after the
// commit before it. Under protocol 2 it returns once the commit has
// started: the exchange runs beside the next session on the commit queue,
// and a failure closes the connection (the next connection compares the
// sites' last blocks and drops a block only one site committed).
func (l *Link) commitBlock(ctx context.Context, p *peerConn, conn raftstore.ConnectionStatus, res session.Result, c msg) error {
	if err := checkCommit(p, c, len(res.Key), blockConn(conn) == ""); err != nil {
		return err
	}
	if err := p.wait(ctx); err != nil {
		return err
	}
	b := raftstore.Block{
		ConnectionID: blockConn(conn), BlockID: c.BlockID, LinkPeer: l.cfg.PeerKME,
		AuthBits:  append([]byte(nil), res.Key[:c.Auth]...),
		Bits:      append([]byte(nil), res.Key[c.Auth:c.Auth+c.KeyBytes]...),
		RelayBits: append([]byte(nil), res.Key[c.Auth+c.KeyBytes:c.Auth+c.KeyBytes+c.Relay]...), RelaySplit: c.RelaySplit,
	}
	res.Key = nil // the caller erases it
	if !p.overlap() {
		return l.commit(ctx, p.w, conn, b, res, c)
	}
	f := &inflight{conn: blockConn(conn), bytes: c.KeyBytes, auth: c.Auth, relay: [2]int{c.RelaySplit, c.Relay - c.RelaySplit}, done: make(chan struct{})}
	p.inflight = f
	cctx, cancel := context.WithTimeout(p.ctx, l.cfg.SessionTimeout)
	go func() {
		defer close(f.done)
		defer cancel()
		if f.err = l.commit(cctx, commitLink{p.w}, conn, b, res, c); f.err != nil {
			p.w.fail(f.err)
		}
	}()
	return nil
}

// commit stores the block at both sites: the slave site first, then the
// master site (a relay-only block, which has no connection: the site that
// plays Bob first). It erases b's bits when done.
func (l *Link) commit(ctx context.Context, ch channel, conn raftstore.ConnectionStatus, b raftstore.Block, res session.Result, c msg) error {
	defer clear(b.Bits)
	defer clear(b.AuthBits)
	defer clear(b.RelayBits)
	slaveHere := conn.TargetKME == l.cfg.LocalKME
	if blockConn(conn) == "" {
		slaveHere = !l.alice
	}
	if slaveHere {
		if err := l.addBlock(ctx, b); err != nil {
			_ = send(ctx, ch, msg{Type: "refuse", Reason: "slave site commit failed: " + err.Error()})
			return fmt.Errorf("link: commit at slave site: %w", err)
		}
		if err := send(ctx, ch, msg{Type: "committed", BlockID: c.BlockID}); err != nil {
			return err
		}
		if err := recvCommitted(ctx, ch, c.BlockID); err != nil {
			// The master site may not have the block; the next connection's
			// history check drops it here.
			return fmt.Errorf("link: master site did not confirm block %s: %w", c.BlockID, err)
		}
	} else {
		if err := recvCommitted(ctx, ch, c.BlockID); err != nil {
			return fmt.Errorf("link: slave site did not commit block %s: %w", c.BlockID, err)
		}
		if err := l.addBlock(ctx, b); err != nil {
			return fmt.Errorf("link: commit at master site: %w", err)
		}
		if err := send(ctx, ch, msg{Type: "committed", BlockID: c.BlockID}); err != nil {
			return err
		}
	}
	l.noteSession(res, c)
	l.cfg.Logger.Info("block committed", "peer", l.cfg.PeerKME, "connection", blockConn(conn), "block", c.BlockID,
		"bits", 8*c.KeyBytes, "auth_bytes", c.Auth, "relay_bytes", c.Relay, "qber", res.QBERZ, "final_bits", res.FinalBits)
	return nil
}

// addBlock stores b here. A store whose cluster version refuses relay
// material (raftstore.ErrNotEnabled) fails this block, and the link makes
// no more relay key until leadership starts anew: the next connection's
// hello tells the peer.
func (l *Link) addBlock(ctx context.Context, b raftstore.Block) error {
	err := l.cfg.Store.AddBlock(ctx, b)
	if err != nil && len(b.RelayBits) > 0 && errors.Is(err, raftstore.ErrNotEnabled) && !l.relayOff.Swap(true) {
		l.cfg.Logger.Warn("the site's store refused relay material; the link makes no relay key until leadership changes",
			"peer", l.cfg.PeerKME, "block", b.BlockID, "err", err)
	}
	return err
}

// recvCommitted waits for the peer's "committed" of block id (commits are
// in order, so any other block is a protocol error).
func recvCommitted(ctx context.Context, ch channel, id string) error {
	m, err := recv(ctx, ch, "committed")
	if err != nil {
		return err
	}
	if m.BlockID != id {
		return fmt.Errorf("%w: the peer confirmed block %s", session.ErrProtocol, m.BlockID)
	}
	return nil
}
