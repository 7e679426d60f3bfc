package link

import (
	"context"
	"fmt"

	"qkdkms/quantum/auth"
	"qkdkms/raftstore"
)

// pads reserves and reads this session's two one-time pads, starting at
// the larger of both sites' pad offsets so that no pad is ever used twice.
func (l *Link) pads(ctx context.Context, st raftstore.LinkState, offset uint64) (ab, ba []byte, err error) {
	end := offset + 2*auth.PadSize
	if err := l.cfg.Store.ReservePads(ctx, l.cfg.PeerKME, end); err != nil {
		return nil, nil, fmt.Errorf("link: reserve pads: %w", err)
	}
	buf, err := l.padBytes(ctx, offset, end)
	if err != nil {
		return nil, nil, err
	}
	// Pads are used once: erase the used stream material (the PSK file's
	// pads are the operator's to retire with the file), in steps of
	// releaseStep bytes to spare a Raft commit per session.
	if psk := uint64(len(l.cfg.PSK) - auth.HashKeySize); end > psk && end-psk >= l.released+releaseStep {
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

// split decides how much of a session's key tops up the pad stream and how
// much goes to the pool: the pool gets at most what it can take; the auth
// stream gets AuthReserveBytes while it holds less than AuthTargetBytes.
func (l *Link) split(keyBytes int, st raftstore.LinkState, need int) (authBytes, blockBytes int) {
	if l.padsLeft(st) < int64(l.cfg.AuthTargetBytes) {
		authBytes = min(l.cfg.AuthReserveBytes, keyBytes)
	}
	blockBytes = min(keyBytes-authBytes, need)
	return authBytes, blockBytes
}
