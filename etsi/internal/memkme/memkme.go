// Package memkme is an in-memory model of KME sites for tests: every site
// implements etsi.Backend with the documented semantics (pools carved from
// the head, assignments relayed to the slave site in the same step,
// multicast erase after the last named slave, all or nothing). It is the
// reference the ETSI handlers and etsitest are checked against; it is not
// used by the product.
package memkme

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/google/uuid"

	"qkdkms/etsi"
)

type connKey struct{ master, slave string }

type assignment struct {
	master, primary string
	named           map[string]bool // every slave named for the key
	pending         map[string]bool // named slaves that have not fetched it yet
	bits            []byte
}

// World holds the sites and the connections registered at them.
type World struct {
	mu     sync.Mutex
	sites  map[string]*Site
	conns  map[connKey]etsi.ConnectionInfo
	down   bool
	burned int
}

// Site is one KME; it implements etsi.Backend.
type Site struct {
	w        *World
	id       string
	pools    map[connKey][]byte
	assigned map[string]*assignment
}

// NewWorld creates sites with the given KME IDs.
func NewWorld(kmeIDs ...string) *World {
	w := &World{sites: map[string]*Site{}, conns: map[connKey]etsi.ConnectionInfo{}}
	for _, id := range kmeIDs {
		w.sites[id] = &Site{w: w, id: id, pools: map[connKey][]byte{}, assigned: map[string]*assignment{}}
	}
	return w
}

// Site returns the site with KME ID id (nil if none).
func (w *World) Site(id string) *Site { return w.sites[id] }

// SetPeerDown makes every relay between sites fail (enc_keys answers
// ErrUnavailable and burns the carved keys) until called with false.
func (w *World) SetPeerDown(down bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.down = down
}

// Burned is the number of keys burned so far.
func (w *World) Burned() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.burned
}

// Fill appends identical material to the connection's pool at both sites.
func (w *World) Fill(master, slave string, material []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := connKey{master, slave}
	c, ok := w.conns[k]
	if !ok {
		return fmt.Errorf("memkme: fill %s→%s: %w", master, slave, etsi.ErrUnknownSAE)
	}
	for _, id := range []string{c.SourceKME, c.TargetKME} {
		s := w.sites[id]
		s.pools[k] = append(s.pools[k], material...)
	}
	return nil
}

// Levels returns every quantity a call can change: pool bits per site and
// connection, and per site the number of (key, slave) shares still to be
// fetched.
func (w *World) Levels() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]int{}
	for id, s := range w.sites {
		for k, p := range s.pools {
			out[fmt.Sprintf("%s/pool/%s>%s", id, k.master, k.slave)] = len(p) * 8
		}
		n := 0
		for _, a := range s.assigned {
			n += len(a.pending)
		}
		out[id+"/pending"] = n
	}
	out["burned"] = w.burned
	return out
}

// KMEID implements etsi.Backend.
func (s *Site) KMEID() string { return s.id }

func (s *Site) info(c etsi.ConnectionInfo) etsi.ConnectionInfo {
	c.StoredKeyCount = len(s.pools[connKey{c.MasterSAE, c.SlaveSAE}]) * 8 / c.KeySize
	return c
}

// Connection implements etsi.Backend.
func (s *Site) Connection(_ context.Context, master, slave string) (etsi.ConnectionInfo, error) {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	c, ok := s.w.conns[connKey{master, slave}]
	if !ok || (c.SourceKME != s.id && c.TargetKME != s.id) {
		return etsi.ConnectionInfo{}, fmt.Errorf("memkme: %s→%s: %w", master, slave, etsi.ErrUnknownSAE)
	}
	return s.info(c), nil
}

// ConnectionsOf implements etsi.Backend.
func (s *Site) ConnectionsOf(_ context.Context, sae string) ([]etsi.ConnectionInfo, error) {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	var out []etsi.ConnectionInfo
	for _, c := range s.w.conns {
		if (c.MasterSAE == sae || c.SlaveSAE == sae) && (c.SourceKME == s.id || c.TargetKME == s.id) {
			out = append(out, s.info(c))
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].MasterSAE+"|"+out[i].SlaveSAE < out[j].MasterSAE+"|"+out[j].SlaveSAE
	})
	return out, nil
}

// RegisterConnection implements etsi.Backend: registered at both sites;
// the same parameters again is a no-op, different ones ErrConflict.
func (s *Site) RegisterConnection(_ context.Context, c etsi.ConnectionInfo) error {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	c.StoredKeyCount = 0
	if c.SourceKME != s.id && c.TargetKME != s.id {
		return fmt.Errorf("memkme: connection does not involve %s: %w", s.id, etsi.ErrBadRequest)
	}
	if s.w.sites[c.SourceKME] == nil || s.w.sites[c.TargetKME] == nil || c.SourceKME == c.TargetKME {
		return fmt.Errorf("memkme: unknown or equal sites %s, %s: %w", c.SourceKME, c.TargetKME, etsi.ErrBadRequest)
	}
	if c.MasterSAE == c.SlaveSAE || c.KeySize <= 0 || c.KeySize%8 != 0 || c.MinKeySize > c.KeySize || c.KeySize > c.MaxKeySize || c.MaxKeyPerRequest < 1 {
		return fmt.Errorf("memkme: invalid connection: %w", etsi.ErrBadRequest)
	}
	k := connKey{c.MasterSAE, c.SlaveSAE}
	if old, ok := s.w.conns[k]; ok {
		if old != c {
			return fmt.Errorf("memkme: %s→%s: %w", c.MasterSAE, c.SlaveSAE, etsi.ErrConflict)
		}
		return nil
	}
	s.w.conns[k] = c
	return nil
}

// EncKeys implements etsi.Backend: carve number keys of size bits off the
// head of the pool at both sites, name them, record the assignment at the
// slave site. Nothing changes on error, except that a failed relay burns
// the carved keys at both sites.
func (s *Site) EncKeys(_ context.Context, r etsi.EncRequest) ([]etsi.Key, error) {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	k := connKey{r.MasterSAE, r.SlaveSAE}
	c, ok := s.w.conns[k]
	if !ok || c.SourceKME != s.id {
		return nil, fmt.Errorf("memkme: %s→%s at %s: %w", r.MasterSAE, r.SlaveSAE, s.id, etsi.ErrUnknownSAE)
	}
	if r.Number < 1 || r.Number > c.MaxKeyPerRequest || r.Size%8 != 0 || r.Size < c.MinKeySize || r.Size > c.MaxKeySize || len(r.Additional) > c.MaxSAEIDCount {
		return nil, fmt.Errorf("memkme: request outside the connection's limits: %w", etsi.ErrBadRequest)
	}
	for _, a := range r.Additional {
		if a == r.MasterSAE || a == r.SlaveSAE {
			return nil, fmt.Errorf("memkme: additional slave %s: %w", a, etsi.ErrBadRequest)
		}
	}
	per := r.Size / 8
	need := r.Number * per
	peer := s.w.sites[c.TargetKME]
	mine, theirs := s.pools[k], peer.pools[k]
	if len(mine) < need {
		return nil, fmt.Errorf("memkme: %d bits stored, %d needed: %w", len(mine)*8, need*8, etsi.ErrInsufficientKeys)
	}
	if len(theirs) < need || !bytes.Equal(mine[:need], theirs[:need]) {
		return nil, fmt.Errorf("memkme: pools out of step: %w", etsi.ErrUnavailable)
	}
	carved := mine[:need]
	s.pools[k] = mine[need:]
	peer.pools[k] = theirs[need:]
	if s.w.down {
		s.w.burned += r.Number
		return nil, fmt.Errorf("memkme: relay to %s: %w", c.TargetKME, etsi.ErrUnavailable)
	}
	keys := make([]etsi.Key, r.Number)
	for i := range keys {
		bits := bytes.Clone(carved[i*per : (i+1)*per])
		id := uuid.NewString()
		named := map[string]bool{r.SlaveSAE: true}
		for _, a := range r.Additional {
			named[a] = true
		}
		pending := make(map[string]bool, len(named))
		for n := range named {
			pending[n] = true
		}
		peer.assigned[id] = &assignment{master: r.MasterSAE, primary: r.SlaveSAE, named: named, pending: pending, bits: bits}
		keys[i] = etsi.Key{KeyID: id, Bits: bytes.Clone(bits)}
	}
	return keys, nil
}

// DecKeys implements etsi.Backend. Checks, all before any change, as the
// node's store makes them (raftstore consumeCheck): every ID is assigned here
// for that master (else ErrKeysNotFound, also when the master has no
// connection whose slave site is this one); the caller was named for every
// key (else ErrUnauthorized); the caller has not fetched any of them yet
// (else ErrKeysNotFound). A key is erased once every named slave fetched it.
func (s *Site) DecKeys(_ context.Context, r etsi.DecRequest) ([]etsi.Key, error) {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	if len(r.KeyIDs) == 0 {
		return nil, fmt.Errorf("memkme: no key IDs: %w", etsi.ErrKeysNotFound)
	}
	if !r.Seed && r.SlaveSAE == "" {
		return nil, fmt.Errorf("memkme: no caller: %w", etsi.ErrUnauthorized)
	}
	as := make([]*assignment, len(r.KeyIDs))
	for i, id := range r.KeyIDs {
		a, ok := s.assigned[id]
		if !ok || (!r.Seed && a.master != r.MasterSAE) {
			return nil, fmt.Errorf("memkme: key %s: %w", id, etsi.ErrKeysNotFound)
		}
		as[i] = a
	}
	who := func(a *assignment) string {
		if r.Seed {
			return a.primary
		}
		return r.SlaveSAE
	}
	for i, a := range as {
		if !a.named[who(a)] {
			return nil, fmt.Errorf("memkme: key %s not for %s: %w", r.KeyIDs[i], who(a), etsi.ErrUnauthorized)
		}
	}
	for i, a := range as {
		if !a.pending[who(a)] {
			return nil, fmt.Errorf("memkme: key %s already fetched: %w", r.KeyIDs[i], etsi.ErrKeysNotFound)
		}
	}
	keys := make([]etsi.Key, len(as))
	for i, a := range as {
		keys[i] = etsi.Key{KeyID: r.KeyIDs[i], Bits: bytes.Clone(a.bits)}
		delete(a.pending, who(a))
		if len(a.pending) == 0 {
			clear(a.bits)
			delete(s.assigned, r.KeyIDs[i])
		}
	}
	return keys, nil
}
