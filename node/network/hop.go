package network

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// tagKeyBytes of relay key after a block's pad key the hop's tag is keyed
// with: each hop uses len(block)+tagKeyBytes bytes of its link's relay key.
const tagKeyBytes = 32

// Hop is one hop of a relayed block: sent by Route[Index-1] to
// Route[Index], the block XORed with relay key [From, From+len(CT)) of
// their link in the sender's direction, and tagged with HMAC-SHA256 keyed
// by the relay key bytes after it, [From+len(CT), To). It carries no key
// bit in the clear.
type Hop struct {
	Block  string   `json:"block"`
	Master string   `json:"master"`
	Slave  string   `json:"slave"`
	Route  []string `json:"route"`
	Index  int      `json:"index"`
	From   uint64   `json:"from"`
	To     uint64   `json:"to"`
	CT     []byte   `json:"ct"`
	Tag    []byte   `json:"tag"`
}

// HopAnswer is the outcome of a hop: delivered at the destination, or the
// site where the relay stopped and why (no key bits).
type HopAnswer struct {
	Delivered bool   `json:"delivered"`
	FailedAt  string `json:"failed_at,omitempty"`
	Reason    string `json:"reason,omitempty"`
}

var errTag = errors.New("network: hop tag does not verify")

// keyBytes is the relay key a block of n bytes uses on each hop.
func keyBytes(n int) uint64 { return uint64(n + tagKeyBytes) }

// seal fills h.CT and h.Tag from the block bits and the hop's relay key
// (len(bits)+tagKeyBytes bytes).
func (h *Hop) seal(bits, key []byte) {
	h.CT = make([]byte, len(bits))
	for i := range bits {
		h.CT[i] = bits[i] ^ key[i]
	}
	h.Tag = h.mac(key[len(bits):])
}

// open verifies the tag with the hop's relay key and returns the block
// bits.
func (h *Hop) open(key []byte) ([]byte, error) {
	if uint64(len(key)) != keyBytes(len(h.CT)) {
		return nil, fmt.Errorf("network: hop key of %d bytes for a %d-byte block", len(key), len(h.CT))
	}
	if !hmac.Equal(h.Tag, h.mac(key[len(h.CT):])) {
		return nil, errTag
	}
	bits := make([]byte, len(h.CT))
	for i := range bits {
		bits[i] = h.CT[i] ^ key[i]
	}
	return bits, nil
}

// mac authenticates everything the hop says: IDs, route, position, range
// and ciphertext.
func (h *Hop) mac(key []byte) []byte {
	m := hmac.New(sha256.New, key)
	for _, s := range []string{h.Block, h.Master, h.Slave, strings.Join(h.Route, "\x00")} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		m.Write(n[:])
		m.Write([]byte(s))
	}
	var nums [24]byte
	binary.BigEndian.PutUint64(nums[0:], uint64(h.Index))
	binary.BigEndian.PutUint64(nums[8:], h.From)
	binary.BigEndian.PutUint64(nums[16:], h.To)
	m.Write(nums[:])
	m.Write(h.CT)
	return m.Sum(nil)
}

// check validates a hop received by site local from site from.
func (h *Hop) check(local, from string) error {
	switch {
	case h.Block == "" || len(h.Block) > 128 || h.Master == "" || h.Slave == "":
		return fmt.Errorf("network: hop needs a block ID of 1..128 bytes, a master and a slave")
	case h.Index < 1 || h.Index >= len(h.Route) || len(h.Route) > 16:
		return fmt.Errorf("network: hop %d of a %d-site route", h.Index, len(h.Route))
	case h.Route[h.Index] != local || h.Route[h.Index-1] != from:
		return fmt.Errorf("network: hop from %s to %s is not hop %d of route %v", from, local, h.Index, h.Route)
	case len(h.CT) == 0 || len(h.CT) > maxBlockBytes || h.To < h.From || h.To-h.From != keyBytes(len(h.CT)) || len(h.Tag) != sha256.Size:
		return fmt.Errorf("network: hop of %d bytes with relay key [%d, %d)", len(h.CT), h.From, h.To)
	}
	seen := map[string]bool{}
	for _, s := range h.Route {
		if s == "" || seen[s] {
			return fmt.Errorf("network: route %v repeats a site", h.Route)
		}
		seen[s] = true
	}
	return nil
}
