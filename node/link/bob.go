package link

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"qkdkms/plugins/host"
	"qkdkms/quantum"
	"qkdkms/quantum/auth"
	"qkdkms/quantum/session"
	"qkdkms/raftstore"
)

// Serve answers a link connection from the peer's leader (Bob's side). It
// returns when the connection fails or this node stops leading.
func (l *Link) Serve(conn net.Conn) {
	w := newWire(conn)
	defer w.Close()
	l.mu.Lock()
	ctx := l.leader
	l.mu.Unlock()
	hctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	hello, err := recv(hctx, w, "hello")
	cancel()
	if err != nil {
		return
	}
	if ctx == nil || ctx.Err() != nil || !l.cfg.Store.IsLeader() {
		_ = send(context.Background(), w, msg{Type: "not_leader"})
		return
	}
	if hello.From != l.cfg.PeerKME || hello.To != l.cfg.LocalKME || l.alice {
		_ = send(ctx, w, msg{Type: "refuse", Reason: fmt.Sprintf("this is %s, which does not answer %s", l.cfg.LocalKME, hello.From)})
		return
	}
	// The newest connection from the peer's leader wins: a previous one may
	// hang on a peer that vanished without closing it (a partition, a new
	// leader at the peer), so close it before serving this one.
	l.mu.Lock()
	if l.serving != nil {
		_ = l.serving.Close()
	}
	l.serving = w
	l.mu.Unlock()
	l.serveMu.Lock()
	defer l.serveMu.Unlock()
	p := newPeerConn(ctx, w, hello.Version)
	// The next connection is served only once this one's commit in flight
	// has ended (serveMu is released after this).
	defer func() {
		_ = w.Close()
		p.dropAhead()
		if err := p.drain(); err != nil && ctx.Err() == nil {
			l.countAbort(err)
			l.cfg.Logger.Warn("block commit failed", "peer", l.cfg.PeerKME, "err", err)
		}
	}()
	stop := context.AfterFunc(ctx, func() { _ = w.Close() })
	defer stop()
	if err := send(ctx, w, msg{Type: "hello", From: l.cfg.LocalKME, To: l.cfg.PeerKME, Version: protocolVersion,
		RelayOK: l.relayAccepted(ctx)}); err != nil {
		return
	}
	var sink quantum.Sink // nil for a key-delivery device
	if pd, ok := l.cfg.Driver.(quantum.PhotonDriver); ok {
		if sink, err = pd.Sink(ctx, l.env(w)); err != nil {
			l.countAbort(fmt.Errorf("link: driver: %w", err))
			l.cfg.Logger.Error("link: driver", "peer", l.cfg.PeerKME, "err", err)
			return
		}
		defer sink.Close()
	}
	l.mu.Lock()
	l.status.Connected = true
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.status.Connected = false
		l.mu.Unlock()
	}()
	l.cfg.Logger.Info("link up", "peer", l.cfg.PeerKME, "role", "bob")
	for ctx.Err() == nil {
		if err := l.bobSession(ctx, p, sink); err != nil {
			if ctx.Err() != nil || errors.Is(err, errLinkGone) {
				return
			}
			l.countAbort(err)
			if errors.Is(err, session.ErrAbort) || errors.Is(err, ErrRefused) {
				l.cfg.Logger.Warn("session aborted", "peer", l.cfg.PeerKME, "err", err)
				continue
			}
			l.cfg.Logger.Warn("link to peer down", "peer", l.cfg.PeerKME, "err", err)
			return
		}
	}
}

var errLinkGone = errors.New("link: connection closed")

// relayAccepted reports, for a hello, whether this site's store takes
// relay material.
func (l *Link) relayAccepted(ctx context.Context) bool {
	st, err := l.cfg.Store.LinkState(ctx, l.cfg.PeerKME)
	return err == nil && l.relayHere(st)
}

// bobSession answers one session (or a ping): BB84 on rx, or a
// key-delivery session when rx is nil.
func (l *Link) bobSession(ctx context.Context, p *peerConn, rx quantum.Receiver) error {
	w := p.w
	ch := auth.NewChannel(w, l.hash)
	b, err := ch.Recv(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", errLinkGone, err)
	}
	var start msg
	if err := json.Unmarshal(b, &start); err != nil {
		return fmt.Errorf("link: undecodable message: %w", err)
	}
	if start.Type == "ping" {
		// Under relayProtocol the pong says again whether this site's store
		// takes relay material: at the hello it may not have yet (a fresh
		// site raises its cluster version a moment after its election), and
		// an idle link learns it here.
		return send(ctx, w, msg{Type: "pong", RelayOK: p.version >= relayProtocol && l.relayAccepted(ctx)})
	}
	if start.Type != "start" {
		return fmt.Errorf("link: expected start, got %q", start.Type)
	}
	ctx, cancel := context.WithTimeout(ctx, l.cfg.SessionTimeout)
	defer cancel()
	refuse := func(reason string, sel host.Selection) error {
		_ = send(ctx, ch, msg{Type: "refuse", Reason: reason, Plugins: sel})
		return fmt.Errorf("%w: %s", ErrRefused, reason)
	}
	if start.Keys != (rx == nil) {
		return refuse(fmt.Sprintf("the link drivers differ: %s runs %s, which %s", l.cfg.LocalKME, l.cfg.Driver.Health().Driver,
			map[bool]string{true: "delivers keys", false: "gives pulse records"}[rx == nil]), nil)
	}
	var conn raftstore.ConnectionStatus // none for a relay-only session
	if start.RelayOnly {
		if p.version < relayProtocol {
			return refuse(fmt.Sprintf("a relay-only session under link protocol %d", p.version), nil)
		}
	} else if conn, err = l.connection(ctx, start.Master, start.Slave); err != nil {
		return refuse(err.Error(), nil)
	}
	var sel host.Selection
	var runner host.Runner
	if rx != nil {
		if sel, runner, err = l.accept(ctx, start.Plugins); err != nil {
			return refuse(err.Error(), sel)
		}
	}
	// The frame the last session ran ahead: finished here if the start
	// names it, discarded otherwise (and on any failure).
	cur := p.takeAhead()
	var next *session.Ahead
	defer func() { discard(cur, next) }()
	if start.Carry != "" && (cur == nil || blockID(cur.ID()) != start.Carry || runner == nil || cur.Identity() != runner.Identity()) {
		return refuse(fmt.Sprintf("the start finishes frame %s, which %s does not hold for this plugin set", start.Carry, l.cfg.LocalKME), nil)
	}
	if start.Carry == "" {
		discard(cur)
		cur = nil
	}
	st, err := l.cfg.Store.LinkState(ctx, l.cfg.PeerKME)
	if err != nil {
		return refuse(err.Error(), nil)
	}
	if !p.overlap() || start.Sync {
		if st, err = l.syncHistory(ctx, st, start.LastBlock, start.PrevBlock); err != nil {
			return refuse(err.Error(), nil)
		}
	}
	ready := msg{Type: "ready", Plugins: sel, LastBlock: st.LastBlock, PrevBlock: st.PrevBlock, PadOffset: p.cursor.offer(st)}
	relayHere := p.version >= relayProtocol && l.relayHere(st)
	if relayHere {
		ready.RelayOK, ready.RelayUsed = true, l.relayUsed()
	}
	if err := send(ctx, ch, ready); err != nil {
		return err
	}
	ab, ba, err := l.pads(ctx, p, st, start.PadOffset)
	if err != nil {
		return err
	}
	var res session.Result
	if rx == nil {
		res, err = l.fetchKeys(ctx, ch, l.cfg.Driver.(quantum.KeyDevice))
	} else {
		cfg := session.Config{Runner: runner, TagBits: l.cfg.TagBits, EpsSec: l.cfg.EpsSec, Timeout: l.cfg.SessionTimeout, Logger: l.cfg.Logger}
		res, next, err = l.finishBB84(ctx, p, ch, runner, cur, func(ctx context.Context, ch quantum.Channel) (*session.Ahead, session.Result, error) {
			return session.BobAhead(ctx, cfg, rx, ch)
		})
		cur = nil // finished (Finish discards it whatever the outcome)
	}
	if err != nil {
		return err
	}
	defer clear(res.Key)
	c, err := recv(ctx, ch, "commit")
	if err != nil {
		return err
	}
	if err := ch.Confirm(ctx, ba, ab); err != nil {
		return fmt.Errorf("%w: %w", session.ErrAbort, err)
	}
	if c.BlockID != blockID(res.BlockID) {
		return fmt.Errorf("%w: commit names block %s, session made %s", session.ErrProtocol, c.BlockID, blockID(res.BlockID))
	}
	if c.Relay > 0 && !relayHere {
		return fmt.Errorf("%w: commit of %d relay bytes, which this site's store does not take", session.ErrProtocol, c.Relay)
	}
	if err := checkCommit(p, c, len(res.Key), start.RelayOnly); err != nil {
		return err
	}
	if err := l.commitBlock(ctx, p, conn, res, c); err != nil {
		return err
	}
	p.ahead, next = next, nil
	return nil
}

func (l *Link) connection(ctx context.Context, master, slave string) (raftstore.ConnectionStatus, error) {
	conns, err := l.cfg.Store.Connections(ctx)
	if err != nil {
		return raftstore.ConnectionStatus{}, err
	}
	for _, c := range conns {
		if c.MasterSAE == master && c.SlaveSAE == slave {
			return c, nil
		}
	}
	return raftstore.ConnectionStatus{}, fmt.Errorf("no connection %s→%s at %s", master, slave, l.cfg.LocalKME)
}
