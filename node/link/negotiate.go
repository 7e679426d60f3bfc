package link

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	"qkdkms/plugins/host"
	"qkdkms/plugins/steps"
	"qkdkms/raftstore"
)

// protocolVersion is the link protocol this node speaks. Version 2 (the
// hello's version field) commits a block while the next session runs,
// with the commit messages on their own queue, and compares the sites'
// last blocks once per connection. A peer that sends no version speaks 1:
// one session at a time, the commit on the classical channel, the history
// compared at every session; this node falls back to it. Version 3 adds
// the relay pool (relay.go): hello and ready say whether the site's store
// takes relay material, ready carries its relay levels, the commit
// message its relay bytes and their split between the two directions, and
// a start may be relay-only (no connection).
// Below 3 the commit message carries no relay bytes. Version 4 runs the
// next frame's front half beside a session's back half (ahead.go): start
// names the frame it finishes (Carry), and an "ahead" message from each
// site precedes the commit.
const protocolVersion = 4

// Link-level messages (JSON on the classical channel).
type msg struct {
	Type string `json:"type"`
	// hello
	From    string `json:"from,omitempty"`
	To      string `json:"to,omitempty"`
	Version int    `json:"version,omitempty"` // link protocol; absent (0) means 1
	// hello / ready (protocol 3): this site's store takes relay material;
	// ready: the relay key this site consumed per direction
	// (raftstore.RelayDir order).
	RelayOK   bool     `json:"relay_ok,omitempty"`
	RelayUsed []uint64 `json:"relay_used,omitempty"`
	// start / ready
	Sync      bool           `json:"sync,omitempty"`       // start: compare last blocks (protocol 2)
	Keys      bool           `json:"keys,omitempty"`       // start: a key-delivery session (keys.go)
	RelayOnly bool           `json:"relay_only,omitempty"` // start: no connection, the key goes to relay (protocol 3)
	Master    string         `json:"master,omitempty"`
	Slave     string         `json:"slave,omitempty"`
	Plugins   host.Selection `json:"plugins,omitempty"`
	LastBlock string         `json:"last_block,omitempty"`
	PrevBlock string         `json:"prev_block,omitempty"`
	PadOffset uint64         `json:"pad_offset,omitempty"`
	Carry     string         `json:"carry,omitempty"` // start: the frame ahead this session finishes (protocol 4)
	// commit; ahead: the next frame's session ID, empty for none
	BlockID  string `json:"block_id,omitempty"`
	KeyBytes int    `json:"key_bytes,omitempty"`
	Auth     int    `json:"auth,omitempty"`
	Relay    int    `json:"relay,omitempty"` // relay bytes after Auth and KeyBytes (protocol 3)
	// RelaySplit: how many of the relay bytes (the first) go to direction
	// 0 (raftstore.RelayDir), the rest to direction 1.
	RelaySplit int    `json:"relay_split,omitempty"`
	Reason     string `json:"reason,omitempty"`
	// keys / fetched (key-delivery sessions)
	KeyIDs []string `json:"key_ids,omitempty"`
	Tag    string   `json:"tag,omitempty"`
}

func send(ctx context.Context, ch interface {
	Send(context.Context, []byte) error
}, m msg) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return ch.Send(ctx, b)
}

func recv(ctx context.Context, ch interface {
	Recv(context.Context) ([]byte, error)
}, want string) (msg, error) {
	b, err := ch.Recv(ctx)
	if err != nil {
		return msg{}, err
	}
	var m msg
	if err := json.Unmarshal(b, &m); err != nil {
		return msg{}, fmt.Errorf("link: undecodable %q message: %w", want, err)
	}
	if m.Type == "refuse" {
		return m, fmt.Errorf("%w: %s", ErrRefused, m.Reason)
	}
	if m.Type == "not_leader" {
		return m, ErrNotLeader
	}
	if m.Type != want {
		return m, fmt.Errorf("link: expected %q message, got %q", want, m.Type)
	}
	return m, nil
}

// syncHistory compares the two sites' last link blocks and drops this
// site's last block when it is the one the peer never committed; it
// returns the link state after that (a drop shortens the pad stream).
func (l *Link) syncHistory(ctx context.Context, mine raftstore.LinkState, peerLast, peerPrev string) (raftstore.LinkState, error) {
	switch {
	case mine.LastBlock == peerLast:
		return mine, nil
	case mine.PrevBlock == peerLast && mine.LastBlock != "":
		l.cfg.Logger.Warn("dropping the last link block: the peer site never committed it",
			"peer", l.cfg.PeerKME, "block", mine.LastBlock)
		if err := l.cfg.Store.DropLastBlock(ctx, l.cfg.PeerKME, mine.LastBlock); err != nil {
			return mine, err
		}
		return l.cfg.Store.LinkState(ctx, l.cfg.PeerKME)
	case peerPrev == mine.LastBlock:
		return mine, nil // the peer is one ahead and drops its block
	default:
		return mine, fmt.Errorf("%w: last blocks %q (here) and %q (peer)", ErrDiverged, mine.LastBlock, peerLast)
	}
}

// resolve fills in the default plugin for every step a selection leaves
// out, so selections compare by what actually runs.
func (l *Link) resolve(sel host.Selection) (host.Selection, host.Runner, error) {
	r, err := l.cfg.Plugins.Runner(sel)
	if err != nil {
		return nil, nil, err
	}
	full := host.Selection{}
	for _, k := range steps.Kinds {
		full[k] = r.Plugin(k).Name
	}
	return full, r, nil
}

// proposal is the selection this site proposes (its active one, resolved)
// and a runner for it.
func (l *Link) proposal(ctx context.Context) (host.Selection, host.Runner, error) {
	sel, err := l.cfg.Plugins.Active(ctx)
	if err != nil {
		return nil, nil, err
	}
	return l.resolve(sel)
}

// accept decides which selection Bob runs for Alice's proposal: the
// proposal when it equals Bob's active selection or the last agreed one;
// otherwise the last agreed selection (keys keep flowing on the old set).
func (l *Link) accept(ctx context.Context, proposed host.Selection) (host.Selection, host.Runner, error) {
	active, _, err := l.proposal(ctx)
	if err != nil {
		return nil, nil, err
	}
	l.mu.Lock()
	agreed := l.agreed
	l.mu.Unlock()
	if sameSelection(proposed, active) || (agreed != nil && sameSelection(proposed, agreed)) {
		full, r, err := l.resolve(proposed)
		if err != nil {
			return nil, nil, err
		}
		if sameSelection(proposed, active) {
			l.noteAgreed(full, r)
		} else {
			l.noteMismatch(active, proposed)
		}
		return full, r, nil
	}
	l.noteMismatch(active, proposed)
	if agreed == nil {
		return active, nil, fmt.Errorf("plugin sets differ (%s here) and none was agreed before", selString(active))
	}
	full, r, err := l.resolve(agreed)
	if err != nil {
		return nil, nil, err
	}
	return full, r, nil
}

func sameSelection(a, b host.Selection) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func selString(s host.Selection) string {
	if len(s) == 0 {
		return "(none)"
	}
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, string(k))
	}
	sort.Strings(keys)
	out := ""
	for i, k := range keys {
		if i > 0 {
			out += ","
		}
		out += k + "=" + s[steps.Kind(k)]
	}
	return out
}
