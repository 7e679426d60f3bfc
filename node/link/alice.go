package link

import (
	"context"
	"errors"
	"fmt"
	"time"

	"qkdkms/plugins/host"
	"qkdkms/quantum"
	"qkdkms/quantum/auth"
	"qkdkms/quantum/session"
	"qkdkms/raftstore"
)

// dialLeader finds the peer site's leader among its nodes.
func (l *Link) dialLeader(ctx context.Context) (*peerConn, error) {
	var errs []error
	for _, addr := range l.cfg.PeerAddrs {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := l.cfg.Dial(dctx, addr)
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		w := newWire(conn)
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		hello, err := l.helloAsAlice(hctx, w)
		cancel()
		if err == nil {
			p := newPeerConn(ctx, w, hello.Version)
			p.peerRelay = hello.RelayOK
			return p, nil
		}
		_ = w.Close()
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
	}
	return nil, fmt.Errorf("link: no leader reachable at %s: %w", l.cfg.PeerKME, errors.Join(errs...))
}

// helloAsAlice greets the peer node and returns its hello: the link
// protocol version it speaks and whether its store takes relay material.
func (l *Link) helloAsAlice(ctx context.Context, w *wire) (msg, error) {
	if err := send(ctx, w, msg{Type: "hello", From: l.cfg.LocalKME, To: l.cfg.PeerKME, Version: protocolVersion,
		RelayOK: l.relayAccepted(ctx)}); err != nil {
		return msg{}, err
	}
	return recv(ctx, w, "hello")
}

// driveConnection runs sessions over one connection until it fails.
func (l *Link) driveConnection(ctx context.Context) (err error) {
	p, err := l.dialLeader(ctx)
	if err != nil {
		return err
	}
	w := p.w
	defer func() {
		_ = w.Close()
		p.dropAhead()
		// A failed commit that ended the loop is its returned error,
		// reported by the caller: logged here only otherwise.
		if derr := p.drain(); derr != nil && ctx.Err() == nil && !errors.Is(err, derr) {
			l.cfg.Logger.Warn("block commit failed", "peer", l.cfg.PeerKME, "err", derr)
		}
	}()
	stop := context.AfterFunc(ctx, func() { _ = w.Close() })
	defer stop()

	var src quantum.Source // nil for a key-delivery device
	if pd, ok := l.cfg.Driver.(quantum.PhotonDriver); ok {
		if src, err = pd.Source(ctx, l.env(w)); err != nil {
			return fmt.Errorf("link: driver: %w", err)
		}
		defer src.Close()
	}
	l.mu.Lock()
	l.status.Connected = true
	l.mu.Unlock()
	l.cfg.Logger.Info("link up", "peer", l.cfg.PeerKME, "role", "alice")
	for ctx.Err() == nil {
		plan, ok, err := l.pick(ctx, p)
		if err != nil {
			return err
		}
		if !ok {
			// Nothing to fill: keep the connection alive with a ping.
			if err := l.ping(ctx, p); err != nil {
				return err
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(l.cfg.Idle):
			}
			continue
		}
		if err := l.aliceSession(ctx, p, src, plan); err != nil {
			if w.closed() {
				// The connection is gone: perhaps a failed commit closed it,
				// which is then the cause to report.
				_ = w.Close()
				if cerr := p.drain(); cerr != nil {
					err = cerr
				}
				l.countAbort(err)
				return err
			}
			l.countAbort(err)
			if errors.Is(err, session.ErrAbort) || errors.Is(err, ErrRefused) {
				// The session ended cleanly with no key; the link is fine.
				// Pause before the next try so a persistent cause (an
				// eavesdropper, a plugin mismatch) does not spin.
				l.cfg.Logger.Warn("session aborted", "peer", l.cfg.PeerKME, "err", err)
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(l.cfg.Idle):
				}
				continue
			}
			return err
		}
	}
	return ctx.Err()
}

func (l *Link) ping(ctx context.Context, p *peerConn) error {
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := send(pctx, p.w, msg{Type: "ping"}); err != nil {
		return err
	}
	pong, err := recv(pctx, p.w, "pong")
	if err == nil && p.version >= relayProtocol {
		p.peerRelay = pong.RelayOK // the peer's store may take relay material by now
	}
	return err
}

// plan is what the next session fills: a connection's pool (and the relay
// pool by its share), or the relay pool alone.
type plan struct {
	conn      raftstore.ConnectionStatus
	relayOnly bool
}

// pick chooses the connection whose pool a session fills (scheduler), or a
// relay-only session when no connection needs key and the relay pool is
// below target (relay.go).
func (l *Link) pick(ctx context.Context, p *peerConn) (plan, bool, error) {
	// Whether the block in flight is still committing is decided before
	// the store is read: a commit that ends in between is then counted
	// twice (a smaller block), never not at all (an overfilled pool).
	f := p.unfinished()
	conns, err := l.cfg.Store.Connections(ctx)
	if err != nil {
		return plan{}, false, err
	}
	f.count(conns)
	if c, ok := l.sched.next(conns, l.cfg.LocalKME, l.cfg.PeerKME); ok {
		return plan{conn: c}, true, nil
	}
	if l.cfg.RelayPoolBytes <= 0 || !p.relay() {
		return plan{}, false, nil
	}
	st, err := l.cfg.Store.LinkState(ctx, l.cfg.PeerKME)
	if err != nil {
		return plan{}, false, err
	}
	if l.relayShort(p, st, f.countRelay(l.relayLevels(p.peerUsed))).total() > 0 {
		return plan{relayOnly: true}, true, nil
	}
	return plan{}, false, nil
}

// aliceSession runs one session as the initiator: BB84 on src's frames,
// or a key-delivery session when src is nil.
func (l *Link) aliceSession(ctx context.Context, p *peerConn, src quantum.Source, pl plan) error {
	conn := pl.conn
	ctx, cancel := context.WithTimeout(ctx, l.cfg.SessionTimeout)
	defer cancel()
	ch := auth.NewChannel(p.w, l.hash)
	st, err := l.cfg.Store.LinkState(ctx, l.cfg.PeerKME)
	if err != nil {
		return err
	}
	var sel host.Selection
	var runner host.Runner
	if src != nil {
		if sel, runner, err = l.proposal(ctx); err != nil {
			return err
		}
	}
	// The frame the last session ran ahead, unless the plugin set changed
	// since: finished first, discarded on any failure.
	cur := p.takeAhead()
	var next *session.Ahead
	defer func() { discard(cur, next) }()
	if cur != nil && (runner == nil || cur.Identity() != runner.Identity()) {
		discard(cur)
		cur = nil
	}
	// Protocol 2 compares the last blocks once per connection: afterwards
	// every commit either completes at both sites or ends the connection.
	sync := !p.overlap() || !p.synced
	start := msg{Type: "start", Master: conn.MasterSAE, Slave: conn.SlaveSAE, Plugins: sel, Sync: sync, Keys: src == nil,
		RelayOnly: pl.relayOnly, LastBlock: st.LastBlock, PrevBlock: st.PrevBlock, PadOffset: p.cursor.offer(st)}
	if cur != nil {
		start.Carry = blockID(cur.ID())
	}
	if err := send(ctx, ch, start); err != nil {
		return err
	}
	ready, err := recv(ctx, ch, "ready")
	if err != nil {
		if errors.Is(err, ErrRefused) && ready.Plugins != nil {
			l.noteMismatch(sel, ready.Plugins)
		}
		return err
	}
	if p.version >= relayProtocol {
		p.peerRelay, p.peerUsed = ready.RelayOK, ready.RelayUsed
	}
	if pl.relayOnly && !p.relay() {
		// Cannot happen unless the peer's store refused relay material
		// since its hello; the next connection's hello says so.
		return fmt.Errorf("link: %s no longer takes relay material", l.cfg.PeerKME)
	}
	switch {
	case src == nil: // no plugins run
	case !sameSelection(sel, ready.Plugins):
		// Bob runs the last agreed set instead of our new one.
		l.noteMismatch(sel, ready.Plugins)
		if _, runner, err = l.resolve(ready.Plugins); err != nil {
			return fmt.Errorf("%w: peer proposes plugins we cannot run: %w", ErrRefused, err)
		}
	default:
		l.noteAgreed(sel, runner)
	}
	if sync {
		if st, err = l.syncHistory(ctx, st, ready.LastBlock, ready.PrevBlock); err != nil {
			return err
		}
		p.synced = true
	}
	ab, ba, err := l.pads(ctx, p, st, ready.PadOffset)
	if err != nil {
		return err
	}
	var res session.Result
	if src == nil {
		f := p.unfinished()
		want := conn.NeedBytes() + l.relayShort(p, st, f.countRelay(l.relayLevels(p.peerUsed))).total()
		res, err = l.drawKeys(ctx, ch, l.cfg.Driver.(quantum.KeyDevice), want)
	} else {
		res, next, err = l.finishBB84(ctx, p, ch, runner, cur, l.aliceFront(src, runner))
		cur = nil // finished (Finish discards it whatever the outcome)
	}
	if err != nil {
		return err
	}
	defer clear(res.Key)
	// The split is part of the authenticated transcript: a changed split
	// would make the sites store different blocks. The relay pool counts
	// the block in flight (decided before the store is read, as in pick).
	f := p.unfinished()
	levels := f.countRelay(l.relayLevels(p.peerUsed))
	sp := l.split(len(res.Key), st, conn.NeedBytes(), l.relayShort(p, st, levels), pl.relayOnly)
	c := msg{Type: "commit", BlockID: blockID(res.BlockID), KeyBytes: sp.pool, Auth: sp.auth, Relay: sp.relay, RelaySplit: sp.relay0}
	if err := send(ctx, ch, c); err != nil {
		return err
	}
	if err := ch.Confirm(ctx, ab, ba); err != nil {
		return fmt.Errorf("%w: %w", session.ErrAbort, err)
	}
	if err := l.commitBlock(ctx, p, conn, res, c); err != nil {
		return err
	}
	p.ahead, next = next, nil
	return nil
}

// aliceFront runs Alice's front half on the source's next frame.
func (l *Link) aliceFront(src quantum.Source, runner host.Runner) frontHalf {
	return func(ctx context.Context, ch quantum.Channel) (*session.Ahead, session.Result, error) {
		frame, pulses, err := src.Next(ctx)
		if err != nil {
			return nil, session.Result{}, fmt.Errorf("link: driver: %w", err)
		}
		defer src.Release(frame)
		cfg := session.Config{
			Runner: runner, Pulses: pulses,
			IntensityProbs: src.IntensityProbs(), TagBits: l.cfg.TagBits, EpsSec: l.cfg.EpsSec,
			Timeout: l.cfg.SessionTimeout, Logger: l.cfg.Logger,
		}
		return session.AliceAhead(ctx, cfg, src, ch, frame)
	}
}
