package link

import (
	"context"

	"qkdkms/plugins/host"
	"qkdkms/quantum"
	"qkdkms/quantum/auth"
	"qkdkms/quantum/session"
)

// aheadProtocol is the first link protocol version under which a BB84
// session also runs the next frame's front half — transmission, sifting
// and estimation — beside its own back half — reconciliation, verification
// and amplification — on the same authenticated channel
// (docs/ARCHITECTURE.md, "Sessions are pipelined"). After both halves each
// site sends an "ahead" message naming the next frame's session, or none
// when its front half failed there; the next frame is kept only when both
// name the same one, and only once this session's transcript is confirmed.
// The next session's start names it (Carry) and finishes it first. A
// session that fails, a refused start or a closed connection discards it:
// an aborted frame adds nothing anywhere (I6).
const aheadProtocol = 4

// frontHalf runs one role's front half of the next frame on ch.
type frontHalf func(ctx context.Context, ch quantum.Channel) (*session.Ahead, session.Result, error)

// takeAhead hands over the front half the last session left, if any.
func (p *peerConn) takeAhead() *session.Ahead {
	a := p.ahead
	p.ahead = nil
	return a
}

// dropAhead discards a front half left for a session that will not come.
func (p *peerConn) dropAhead() { discard(p.takeAhead()) }

// discard clears the sifted keys of front halves that will not be
// finished; nil ones are skipped.
func discard(as ...*session.Ahead) {
	for _, a := range as {
		if a != nil {
			a.Discard()
		}
	}
}

// finishBB84 finishes the frame cur (running its front half first when
// there is none) and, under aheadProtocol, runs the next frame's front half
// beside it. It returns cur's result and the next frame's front half when
// both sites hold it; the caller keeps that only if the session commits.
func (l *Link) finishBB84(ctx context.Context, p *peerConn, ch *auth.Channel, runner host.Runner, cur *session.Ahead, front frontHalf) (session.Result, *session.Ahead, error) {
	if cur == nil {
		a, res, err := front(ctx, ch)
		if err != nil {
			l.noteQBER(res)
			return res, nil, err
		}
		cur = a
	}
	if p.version < aheadProtocol {
		res, err := cur.Finish(ctx, runner, ch)
		l.noteQBER(res)
		return res, nil, err
	}
	mux := session.NewMux(ch, cur.ID())
	var next *session.Ahead
	var nres session.Result
	var nerr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		next, nres, nerr = front(ctx, mux.Next())
	}()
	res, err := cur.Finish(ctx, runner, mux.Finishing())
	<-done
	l.noteQBER(res)
	if nerr != nil {
		l.noteQBER(nres)
		l.countAbort(nerr)
		l.cfg.Logger.Warn("next frame aborted", "peer", l.cfg.PeerKME, "err", nerr)
	}
	// Also after a failed session: the "ahead" messages end what the two
	// halves sent at both sites, so the channel is left clean.
	next, serr := settleAhead(ctx, mux.After(), next)
	if err != nil {
		discard(next) // its messages are never confirmed
		return res, nil, err
	}
	return res, next, serr
}

// settleAhead tells the peer which next frame this site holds and keeps it
// only when the peer holds the same one.
func settleAhead(ctx context.Context, ch quantum.Channel, next *session.Ahead) (*session.Ahead, error) {
	id := ""
	if next != nil {
		id = blockID(next.ID())
	}
	keep := false
	defer func() {
		if !keep {
			discard(next)
		}
	}()
	if err := send(ctx, ch, msg{Type: "ahead", BlockID: id}); err != nil {
		return nil, err
	}
	m, err := recv(ctx, ch, "ahead")
	if err != nil {
		return nil, err
	}
	if keep = id != "" && m.BlockID == id; !keep {
		return nil, nil
	}
	return next, nil
}
