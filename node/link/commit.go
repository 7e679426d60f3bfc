package link

import (
	"context"
	"encoding/hex"
	"fmt"

	"qkdkms/quantum/session"
	"qkdkms/raftstore"
)

func blockID(id [16]byte) string { return hex.EncodeToString(id[:]) }

// commit stores the block at both sites: the slave site first, then the
// master site.
func (l *Link) commit(ctx context.Context, w *wire, conn raftstore.ConnectionStatus, res session.Result, c msg) error {
	if c.Auth+c.KeyBytes > len(res.Key) || c.Auth < 0 || c.KeyBytes < 0 {
		return fmt.Errorf("%w: commit of %d+%d bytes from a %d-byte key", session.ErrProtocol, c.Auth, c.KeyBytes, len(res.Key))
	}
	b := raftstore.Block{
		ConnectionID: conn.ID(), BlockID: c.BlockID, LinkPeer: l.cfg.PeerKME,
		AuthBits: append([]byte(nil), res.Key[:c.Auth]...),
		Bits:     append([]byte(nil), res.Key[c.Auth:c.Auth+c.KeyBytes]...),
	}
	defer clear(b.Bits)
	defer clear(b.AuthBits)
	slaveHere := conn.TargetKME == l.cfg.LocalKME
	if slaveHere {
		if err := l.cfg.Store.AddBlock(ctx, b); err != nil {
			_ = send(ctx, w, msg{Type: "refuse", Reason: "slave site commit failed: " + err.Error()})
			return fmt.Errorf("link: commit at slave site: %w", err)
		}
		if err := send(ctx, w, msg{Type: "committed", BlockID: c.BlockID}); err != nil {
			return err
		}
		if _, err := recv(ctx, w, "committed"); err != nil {
			// The master site may not have the block; the next session's
			// history check drops it here.
			return fmt.Errorf("link: master site did not confirm block %s: %w", c.BlockID, err)
		}
	} else {
		if _, err := recv(ctx, w, "committed"); err != nil {
			return fmt.Errorf("link: slave site did not commit block %s: %w", c.BlockID, err)
		}
		if err := l.cfg.Store.AddBlock(ctx, b); err != nil {
			return fmt.Errorf("link: commit at master site: %w", err)
		}
		if err := send(ctx, w, msg{Type: "committed", BlockID: c.BlockID}); err != nil {
			return err
		}
	}
	l.noteSession(res, c)
	l.cfg.Logger.Info("block committed", "peer", l.cfg.PeerKME, "connection", conn.ID(), "block", c.BlockID,
		"bits", 8*c.KeyBytes, "auth_bytes", c.Auth, "qber", res.QBERZ, "final_bits", res.FinalBits)
	return nil
}
