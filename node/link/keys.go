package link

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"qkdkms/quantum"
	"qkdkms/quantum/session"
)

// Key-delivery sessions (a quantum.KeyDevice at both sites, e.g. ETSI GS
// QKD 014 devices): the devices post-process themselves, so a session
// replaces BB84 by this exchange on the authenticated channel, after the
// same start/ready, history check and pads as any session:
//
//	Alice: ids, key := her device's Draw      → keys{block_id, key_ids, key_bytes}
//	Bob:   key' := his device's Fetch(ids)    → fetched{tag: HMAC-SHA256(key', label)}
//	Alice: tag == HMAC-SHA256(key, label)?    → commit (then the tags and the
//	       slave-site-first commit of every session)
//
// A device that fails, or two devices that deliver different bytes, end the
// session with nothing committed anywhere (I6); the keys the devices handed
// out are spent.

// keyTagLabel is the message the key tags authenticate: a tag is a MAC
// keyed by the delivered key, so it reveals nothing usable about the key.
const keyTagLabel = "qkdkms link: the two devices delivered the same key"

func keyTag(key []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(keyTagLabel))
	return hex.EncodeToString(m.Sum(nil))
}

// keyBytes is how much key Alice draws when the pools (the connection's
// and the relay pool) can still take want bytes: a block, or that and
// the pad top-up, in whole device keys.
func (l *Link) keyBytes(dev quantum.KeyDevice, want int) int {
	unit := max(1, dev.KeyBytes())
	n := min(l.cfg.BlockBits/8, want+l.cfg.AuthReserveBytes)
	return max(unit, n/unit*unit)
}

// drawKeys is Alice's side of a key-delivery session; want is what the
// pools can take (keyBytes).
func (l *Link) drawKeys(ctx context.Context, ch channel, dev quantum.KeyDevice, want int) (session.Result, error) {
	var res session.Result
	ids, key, err := dev.Draw(ctx, l.keyBytes(dev, want))
	if err != nil {
		_ = send(ctx, ch, msg{Type: "refuse", Reason: "the key-delivery device at " + l.cfg.LocalKME + " failed"})
		return res, fmt.Errorf("%w: draw from this site's device: %w", session.ErrAbort, err)
	}
	if _, err := rand.Read(res.BlockID[:]); err != nil {
		clear(key)
		return res, err
	}
	res.Key, res.FinalBits = key, 8*len(key)
	if err := send(ctx, ch, msg{Type: "keys", BlockID: blockID(res.BlockID), KeyIDs: ids, KeyBytes: len(key)}); err != nil {
		clear(key)
		return session.Result{}, err
	}
	f, err := recv(ctx, ch, "fetched")
	if err != nil {
		clear(key)
		return session.Result{}, fmt.Errorf("%w: %w", session.ErrAbort, err)
	}
	if !hmac.Equal([]byte(f.Tag), []byte(keyTag(key))) {
		clear(key)
		_ = send(ctx, ch, msg{Type: "refuse", Reason: "the two devices delivered different keys"})
		return session.Result{}, fmt.Errorf("%w: the devices at %s and %s delivered different keys", session.ErrAbort, l.cfg.LocalKME, l.cfg.PeerKME)
	}
	return res, nil
}

// fetchKeys is Bob's side of a key-delivery session.
func (l *Link) fetchKeys(ctx context.Context, ch channel, dev quantum.KeyDevice) (session.Result, error) {
	var res session.Result
	k, err := recv(ctx, ch, "keys")
	if err != nil {
		return res, fmt.Errorf("%w: %w", session.ErrAbort, err)
	}
	id, err := hex.DecodeString(k.BlockID)
	if err != nil || len(id) != len(res.BlockID) || len(k.KeyIDs) == 0 || k.KeyBytes <= 0 {
		return res, fmt.Errorf("%w: malformed keys message", session.ErrProtocol)
	}
	key, err := dev.Fetch(ctx, k.KeyIDs)
	if err != nil {
		_ = send(ctx, ch, msg{Type: "refuse", Reason: "the key-delivery device at " + l.cfg.LocalKME + " failed"})
		return res, fmt.Errorf("%w: fetch from this site's device: %w", session.ErrAbort, err)
	}
	if len(key) != k.KeyBytes {
		clear(key)
		_ = send(ctx, ch, msg{Type: "refuse", Reason: "the two devices delivered different keys"})
		return res, fmt.Errorf("%w: this site's device returned %d bytes for %d", session.ErrAbort, len(key), k.KeyBytes)
	}
	if err := send(ctx, ch, msg{Type: "fetched", Tag: keyTag(key)}); err != nil {
		clear(key)
		return res, err
	}
	copy(res.BlockID[:], id)
	res.Key, res.FinalBits = key, 8*len(key)
	return res, nil
}
